"""The equal-time generation benchmark: its budget rule, its scores, and the peers it trains."""

import importlib.util

import numpy as np
import pytest
import torch
from trainkit import TINY_DIFFUSION, merged, write_config

from bench.equal_time import scaled_warmup, seconds_per_step, steps_for_budget
from bench.peers_gen import parameter_count
from bench.quality_gen import check_held_out, classifier_scores, requested_labels, score_samples
from train import load_config, train

has_lucidrains = all(importlib.util.find_spec(n) for n in ("denoising_diffusion_pytorch", "ema_pytorch"))


# ---------------------------------------------------------------------------- the budget rule
def test_seconds_per_step_leaves_out_the_first_step():
    # Step 1 ends at 5 s (start-up), then 0.5 s per step.
    assert seconds_per_step([5.0, 5.5, 6.0, 6.5]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least 2"):
        seconds_per_step([1.0])


def test_steps_fill_the_budget_and_the_warmup_keeps_its_share():
    assert steps_for_budget(15, 0.9) == 1000            # 900 s / 0.9 s
    assert steps_for_budget(0.01, 10.0) == 1            # never zero steps
    assert scaled_warmup(500, 1000, 20000) == 25        # 2.5 % of the run, as in the config
    assert scaled_warmup(500, 3, 3) == 2                # never the whole run
    with pytest.raises(ValueError):
        steps_for_budget(15, 0.0)


def test_a_missing_peer_package_is_named(monkeypatch):
    from bench import peers_gen

    real = importlib.util.find_spec
    monkeypatch.setattr(peers_gen.importlib.util, "find_spec", lambda name: None if name == "ema_pytorch" else real(name))
    assert peers_gen.missing_package("ours") is None
    assert peers_gen.missing_package("lucidrains") in ("denoising_diffusion_pytorch", "ema_pytorch")


# ---------------------------------------------------------------------------- scoring
def test_requested_labels_ask_for_each_digit_equally_in_turn():
    labels = requested_labels(50)
    assert labels[:12].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert torch.bincount(labels).tolist() == [5] * 10
    with pytest.raises(ValueError, match="multiple of 10"):
        requested_labels(55)


def test_classifier_scores_on_hand_made_outputs():
    probs = np.array([
        [0.95, 0.05, 0.0],   # confident, read 0, asked 0
        [0.40, 0.60, 0.0],   # unsure, read 1, asked 1
        [0.0, 0.05, 0.95],   # confident, read 2, asked 1
        [0.50, 0.0, 0.50],   # a tie reads the first class; asked 2
    ])
    scores = classifier_scores(probs, np.array([0, 1, 1, 2]))
    assert scores["confident"] == 0.5
    assert scores["agreement"] == 0.5
    assert scores["histogram"] == [2, 1, 1]


def test_fd_ratio_is_zero_for_the_reference_itself_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    r1 = rng.normal(size=(200, 4))
    probs, asked = np.eye(10)[np.arange(200) % 10], np.arange(200) % 10
    same = score_samples(r1, probs, asked, r1, real_fd=2.0)
    assert same["fd"] == pytest.approx(0.0, abs=1e-6) and same["agreement"] == 1.0
    shifted = score_samples(r1 + 3.0, probs, asked, r1, real_fd=2.0)
    assert shifted["fd"] == pytest.approx(4 * 9.0, rel=1e-6)    # |mean shift|^2 = 4 features x 3^2
    assert shifted["fd_ratio"] == pytest.approx(18.0, rel=1e-6)


def test_too_few_held_out_digits_say_what_to_change():
    check_held_out(1000, 500, 1000)
    with pytest.raises(SystemExit, match=r"data.val_size=1000"):
        check_held_out(200, 500, 200)


# ---------------------------------------------------------------------------- the peers
def test_diffusers_unet_trains_through_our_loop_and_samples_with_guidance(tmp_path, one_thread):
    from bench.peers_gen import DiffusersUNetTask
    from pipelines import DenoisePipeline
    from train.diffusion import build_unet

    values = merged(TINY_DIFFUSION, train={"steps": 2, "checkpoint_every": 0, "output_dir": str(tmp_path / "run")})
    config = load_config(write_config(tmp_path / "tiny.yaml", values))
    task = DiffusersUNetTask(config)
    result = train(config, task=task, log=lambda text: None)
    assert result.step == 2 and len(result.losses) == 2

    model = task.ema_model
    assert type(model).__name__ == "GuidedUNet2DModel" and model.config.num_class_embeds == 4  # 3 labels + null
    ours = build_unet(config, sample_size=8, in_channels=3)
    assert parameter_count(model) == parameter_count(ours)  # the exact translation of our network
    pipe = DenoisePipeline(unet=model, scheduler=task.scheduler)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=[0, 1, 2], guidance_scale=3.0, sampler="ddim", num_inference_steps=2,
                  generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (3, 3, 8, 8) and 0 <= images.min() and images.max() <= 1


@pytest.mark.skipif(not has_lucidrains, reason="denoising-diffusion-pytorch is not installed")
def test_lucidrains_trains_in_its_loop_keeps_two_points_and_guides_plainly(tmp_path, one_thread):
    from bench.peers_gen import LucidrainsRun, sample_lucidrains

    values = merged(TINY_DIFFUSION, train={"steps": 3}, data={"source": "synthetic", "image_size": 8, "channels": 1})
    config = load_config(write_config(tmp_path / "tiny.yaml", values))
    images, labels = torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 3
    run = LucidrainsRun(config, images, labels, sample_steps=2)
    clock = run.run(minutes=None, snapshot_minutes=0.0)
    assert len(clock) == 3 and [s[0] for s in run.snapshots] == ["half", "end"] and run.snapshots[0][2] == 1

    diffusion = run.snapshots[-1][3]
    unet = diffusion.model
    x, t, classes = torch.randn(2, 1, 8, 8), torch.tensor([5, 50]), torch.tensor([0, 2])
    guided, uncond = unet.forward_with_cond_scale(x, t, classes, cond_scale=3.0)
    cond = unet.forward(x, t, classes, cond_drop_prob=0.0)
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond))
    samples = sample_lucidrains(diffusion, torch.tensor([0, 1, 2]), guidance=3.0, seed=0)
    assert samples.shape == (3, 1, 8, 8) and 0 <= samples.min() and samples.max() <= 1

