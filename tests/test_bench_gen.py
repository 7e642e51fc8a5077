"""The equal-time generation benchmark: its budget rule, its scores, and the peers it trains."""

import importlib.util

import numpy as np
import pytest
import torch
from trainkit import TINY_DIFFUSION, merged, write_config

from bench.equal_time import STEP_CAP
from bench.peers_gen import parameter_count
from bench.quality_gen import LOOP_OVERRIDES, Plan, check_held_out, classifier_scores, requested_labels, score_samples
from train import load_config, train
from train.loop import read_log

has_lucidrains = all(importlib.util.find_spec(n) for n in ("denoising_diffusion_pytorch", "ema_pytorch"))


# ---------------------------------------------------------------------------- the budget rule
class SlowingClock:
    """A fake clock: every reading moves it ``tick`` seconds on; ``slow_after`` readings double the tick."""

    def __init__(self, slow_after: int):
        self.now, self.readings, self.slow_after = 0.0, 0, slow_after

    def __call__(self) -> float:
        self.readings += 1
        self.now += 1.0 if self.readings <= self.slow_after else 2.0
        return self.now


def test_our_loop_ends_near_its_budget_with_its_schedule_decayed(tmp_path, monkeypatch, one_thread):
    from bench.quality_gen import run_our_loop
    from train.diffusion import build_unet

    # Steps get twice as slow after a while (a busy machine): a plan made from the first steps, as a
    # probe would make it, would be cut by the budget with its schedule half done.
    monkeypatch.setattr("train.loop.monotonic", SlowingClock(slow_after=20))
    values = merged(TINY_DIFFUSION, optim={"lr": 1e-3, "warmup_steps": 0, "lr_schedule": "cosine"})
    path = write_config(tmp_path / "tiny.yaml", values)
    plan = Plan(path, [], LOOP_OVERRIDES, load_config(path, LOOP_OVERRIDES), minutes=1.0, samples=10, sample_steps=2,
                guidance=2.0, classifier_epochs=1, seed=0)
    method = run_our_loop("ours", plan, lambda config: None, tmp_path, torch.device("cpu"))

    half, end = method.points
    assert (half.label, end.label) == ("half", "end") and half.steps < end.steps
    assert 0.5 <= half.minutes <= 0.65 and 0.95 <= end.minutes <= 1.15         # the loop's clock, over both invocations
    assert end.steps < STEP_CAP and abs(method.planned_steps - end.steps) <= 1  # the budget, not the cap, decided
    assert method.step_seconds == pytest.approx(60 * end.minutes / end.steps)
    assert method.warmup_steps == 0 and method.params == parameter_count(build_unet(plan.config, sample_size=8, in_channels=3))
    lrs = [r["lr"] for r in read_log(tmp_path / "ours") if "lr" in r]
    assert lrs[-1] < 0.02 * 1e-3 < lrs[len(lrs) // 2]                            # the schedule ended with the budget
    images = end.sample(torch.tensor([0, 1, 2]))
    assert images.shape == (3, 3, 8, 8) and 0 <= images.min() and images.max() <= 1


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
    assert run.planned_steps == 3 and sorted(run.losses) == sorted(run.lrs) == [1, 2, 3]

    diffusion = run.snapshots[-1][3]
    unet = diffusion.model
    x, t, classes = torch.randn(2, 1, 8, 8), torch.tensor([5, 50]), torch.tensor([0, 2])
    guided, uncond = unet.forward_with_cond_scale(x, t, classes, cond_scale=3.0)
    cond = unet.forward(x, t, classes, cond_drop_prob=0.0)
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond))
    samples = sample_lucidrains(diffusion, torch.tensor([0, 1, 2]), guidance=3.0, seed=0)
    assert samples.shape == (3, 1, 8, 8) and 0 <= samples.min() and samples.max() <= 1



@pytest.mark.skipif(not has_lucidrains, reason="denoising-diffusion-pytorch is not installed")
def test_lucidrains_follows_the_budget_plan_as_its_steps_slow(tmp_path, monkeypatch, one_thread):
    from bench import peers_gen
    from bench.peers_gen import LucidrainsRun

    monkeypatch.setattr(peers_gen, "perf_counter", SlowingClock(slow_after=20))
    values = merged(TINY_DIFFUSION, train={"steps": 10_000}, data={"source": "synthetic", "image_size": 8, "channels": 1},
                    optim={"lr": 1e-3, "warmup_steps": 0, "lr_schedule": "cosine"})
    config = load_config(write_config(tmp_path / "tiny.yaml", values))
    run = LucidrainsRun(config, torch.rand(16, 1, 8, 8) * 2 - 1, torch.arange(16) % 3, sample_steps=2)
    clock = run.run(minutes=1.0, snapshot_minutes=0.5)

    steps = len(clock)
    assert 58 <= clock[-1] <= 62 and steps < 55            # the budget ended it: at 1 s a step 60 would have fitted
    assert abs(run.planned_steps - steps) <= 1               # ... as the last plan said
    assert [s[0] for s in run.snapshots] == ["half", "end"] and 0.5 <= run.snapshots[0][1] <= 0.55
    lrs = [run.lrs[step] for step in sorted(run.lrs)]
    assert lrs[-1] < 0.02 * 1e-3 < lrs[steps // 2]          # the rebuilt schedule decayed on time
