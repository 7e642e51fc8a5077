"""The segmentation benchmark's pieces: the smp adapter in our loop and pipeline, and the pure helpers."""

import numpy as np
import pytest
import torch
import yaml
from trainkit import TINY_SEGMENTATION, merged

from bench.equal_time import STEP_CAP, parse_methods
from bench.metrics import cell_components
from bench.quality_seg import (
    METHODS,
    TRAINING,
    Experiment,
    Method,
    check_sets,
    fixed_split,
    nearest_crop,
    plot_curves,
    quick_overrides,
    run_method,
    run_overrides,
    segmentation_scores,
    shrunk_channels,
)
from bench.smp_unet import SmpTask, SmpUNet, check_side, load_smp_pipeline, smp_available, smp_crop
from train import load_config, train
from train.config import config_from_dict
from train.data import open_source
from train.loop import read_log


# ---------------------------------------------------------------------------- the smp adapter
@pytest.mark.skipif(not smp_available(), reason="segmentation-models-pytorch is not installed")
def test_smp_unet_trains_in_our_loop_resumes_and_segments_through_the_pipeline(tmp_path, one_thread):
    values = merged(TINY_SEGMENTATION, data={"image_size": 32, "synthetic_size": 8, "val_size": 0},
                    train={"steps": 2, "batch_size": 2, "output_dir": str(tmp_path / "run")})
    config = config_from_dict(values)
    task = SmpTask(config, "resnet18", crop=32)
    assert (task.in_size, task.out_size) == (32, 32)
    initial = {}
    build = task.build_model

    def recording_build():
        model = build()
        initial.update({k: v.clone() for k, v in model.state_dict().items()})
        return model

    task.build_model = recording_build
    result = train(config, task=task, log=lambda text: None)
    assert result.step == 2 and len(result.losses) == 2 and all(np.isfinite(list(result.losses.values())))
    trained = SmpUNet.from_pretrained(str(tmp_path / "run" / "smp-unet"))
    assert any(not torch.equal(initial[k], v) for k, v in trained.state_dict().items() if v.is_floating_point())

    # The bench's second half: resume the checkpoint (the adapter saves and loads like our UNet).
    longer = config_from_dict(merged(values, train={"steps": 3}))
    assert train(longer, resume="latest", task=SmpTask(longer, "resnet18", crop=32), log=lambda text: None).step == 3

    pipe = load_smp_pipeline(tmp_path / "run")
    out = pipe(np.random.default_rng(0).random((40, 50), dtype=np.float32))  # not a multiple of 32: mirrored up, cropped back
    assert out.masks.shape == (1, 40, 50) and out.probabilities.shape == (1, 2, 40, 50)
    np.testing.assert_allclose(out.probabilities.sum(1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="multiples of 32; got 100 \\(nearest: 96, 128\\)"):
        SmpTask(config, "resnet18", crop=100)


def test_smp_sides():
    assert smp_crop(388) == 384 and smp_crop(384) == 384 and smp_crop(100) == 96
    assert check_side(64) == 64
    with pytest.raises(ValueError, match="at least 32"):
        smp_crop(20)


# ---------------------------------------------------------------------------- helpers
def test_methods_sets_and_split():
    assert parse_methods("ours, smp,ours", METHODS) == ["ours", "smp"] and parse_methods("smp", METHODS) == ["smp"]
    for bad in ("", "ours,fcn"):
        with pytest.raises(ValueError, match="--methods"):
            parse_methods(bad, METHODS)
    check_sets(["optim.lr=3e-4", "model.args.channels=[8, 16]"])
    for key in ("train.steps", "train.budget_minutes", "train.max_minutes"):
        with pytest.raises(ValueError, match=f"sets {key} itself"):
            check_sets([f"{key}=10"])
    train_idx, held_out = fixed_split(25)
    assert train_idx == list(range(20)) and held_out == [20, 21, 22, 23, 24]
    with pytest.raises(ValueError, match="25 ISBI 2012"):
        fixed_split(30)


def test_run_overrides_fix_the_training_set_and_budget(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(merged(TINY_SEGMENTATION, data={"val_size": 5, "limit": None})))
    config = load_config(path, run_overrides(tmp_path / "run", 1.5, None, seed=3, threads=1))
    assert (config.data.limit, config.data.val_size) == (20, 0)  # the first 20 pairs; the loop holds nothing out
    assert (config.train.seed, config.train.cpu_threads) == (3, 1)
    # The budget decides the length (train.steps only caps it); the first invocation stops at half of it.
    assert (config.train.budget_minutes, config.train.max_minutes, config.train.steps) == (1.5, 0.75, STEP_CAP)
    assert config.train.eval_every == 0 and config.train.checkpoint_every == 0 and config.segmentation.num_overlays == 0
    resumed = load_config(path, run_overrides(tmp_path, 1.5, "latest", seed=0, threads=None)).train
    assert (resumed.budget_minutes, resumed.max_minutes) == (1.5, None)  # the second trains to the end of the budget


def test_a_method_trains_in_two_budgeted_halves_and_is_scored_after_each(tmp_path, monkeypatch, one_thread):
    ticks = iter(range(100_000))  # every reading of the loop's clock moves it 1 s on
    monkeypatch.setattr("train.loop.monotonic", lambda: float(next(ticks)))
    values = merged(TINY_SEGMENTATION, data={"synthetic_size": 25, "val_size": 0},
                    optim={"lr": 1e-3, "warmup_steps": 0, "lr_schedule": "cosine"})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(values))
    base = load_config(path)
    source = open_source(base)
    experiment = Experiment(path, [], base, source, list(range(TRAINING, 25)), [source.name(i) for i in range(25)], {},
                            seed=0, threads=None)
    said = []
    result, first = run_method(Method("ours", base, "resnet18", {}), experiment, tmp_path / "ours", 1.0,
                               torch.device("cpu"), said.append)

    half, end = result["points"]
    assert (half["point"], end["point"]) == ("half", "end") and half["steps"] < end["steps"]
    assert 0.5 <= half["minutes"] <= 0.6 and 0.95 <= end["minutes"] <= 1.1   # the loop's clock, both invocations
    assert result["planned_steps"] == end["steps"] < STEP_CAP
    assert result["seconds_per_step"] == pytest.approx(60 * end["minutes"] / end["steps"])
    assert "resumed" not in " ".join(said) and len(said) == 2
    lrs = [r["lr"] for r in read_log(tmp_path / "ours") if "lr" in r]
    assert lrs[-1] < 0.02 * 1e-3 < lrs[len(lrs) // 2]                      # the schedule ended with the budget
    assert first.shape == (16, 16) and 0 <= end["mean"]["pixel_error"] <= 1


def test_quick_narrows_any_network_and_finds_a_crop(tmp_path):
    assert shrunk_channels((64, 128, 1024), 8) == [8, 16, 128] and shrunk_channels((4,), 8) == [1]
    valid = tmp_path / "valid.yaml"  # the paper's network: valid padding, output sides 4 + 16k... near 100
    valid.write_text(yaml.safe_dump({"task": "segmentation", "model": {"preset": "ronneberger2015"},
                                     "data": {"channels": 1, "image_size": 388}}))
    items = quick_overrides(valid, [])
    assert items == ["model.args.channels=[8, 16, 32, 64, 128]", "data.image_size=100"]
    config = load_config(valid, items)
    assert nearest_crop(config, 101) == 100 and nearest_crop(config, 90) == 84
    grouped = tmp_path / "grouped.yaml"  # GroupNorm with 8 groups: 32 // 8 = 4 channels need fewer groups
    grouped.write_text(yaml.safe_dump({"task": "segmentation", "model": {"preset": "seg-small"},
                                       "data": {"channels": 1, "image_size": 64}}))
    assert quick_overrides(grouped, []) == ["model.args.channels=[4, 8, 16]", "model.args.norm_groups=4", "data.image_size=64"]
    assert quick_overrides(grouped, ["data.image_size=30"])[-1] == "data.image_size=28"  # a multiple of 4, not above 30


def test_scores_and_curve(tmp_path):
    truth = np.ones((20, 20), np.int64)
    truth[10] = 0  # a membrane line between two cells
    perfect = segmentation_scores(truth, truth, cell=1, cells=cell_components(truth == 1))
    assert perfect["pixel_error"] == 0 and perfect["rand_error"] == pytest.approx(0) and perfect["membrane_dice"] == 1
    merged_cells = segmentation_scores(truth, np.ones_like(truth), cell=1, cells=np.ones_like(truth))
    assert merged_cells["pixel_error"] == 0.05 and merged_cells["rand_error"] > 0.3 and merged_cells["membrane_dice"] == 0
    pytest.importorskip("matplotlib")
    points = [dict(minutes=m, mean=dict(pixel_error=e, rand_error=e)) for m, e in ((1, 0.3), (2, 0.2))]
    path = plot_curves([dict(label="ours", points=points)], tmp_path / "curve.png")
    assert path.is_file() and path.stat().st_size > 1000
