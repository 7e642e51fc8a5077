"""The training loop: it learns, resumes exactly, survives kills and signals, refuses NaNs, and runs
the same on 2 processes as on 1."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from trainkit import ROOT, TINY_DIFFUSION, TINY_SEGMENTATION, merged, start_cli, write_config

from pipelines import DenoisePipeline, SegmentationPipeline
from train.budget import TIMED_STEPS, TimeBudget
from train.checkpoint import latest_checkpoint, list_checkpoints, read_state
from train.config import config_from_dict
from train.loop import NonFiniteLossError, read_log, train
from unet_diffusion import load_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(tmp_path, name="run", base=TINY_DIFFUSION, **sections):
    values = merged(base, **sections)
    values["train"] = {**values["train"], "output_dir": str(tmp_path / name)}
    return config_from_dict(values)


def weights(folder):
    return load_file(str(folder / "model" / "diffusion_pytorch_model.safetensors"))


def test_diffusion_run_writes_everything_and_learns(tmp_path):
    config = tiny(tmp_path, train={"steps": 24, "log_every": 1, "checkpoint_every": 8, "keep_checkpoints": 2},
                  data={"val_size": 8}, diffusion={"sample_every": 12}, optim={"lr": 3e-3})
    result = train(config)
    run = result.run_dir
    assert result.step == 24 and result.interrupted is None
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5  # it learns
    assert [p.name for p in list_checkpoints(run)] == ["step-00000016", "step-00000024"]  # keep the last 2
    for name in ("config.yaml", "log.jsonl", "samples.png", "samples/step-00000012.png", "model.safetensors",
                 "pipeline/model_index.json", "pipeline/unet/diffusion_pytorch_model.safetensors"):
        assert (run / name).is_file(), name
    assert "val_loss" in result.metrics
    rows = [r for r in read_log(run) if "loss" in r]
    assert all(r["images_per_second"] > 0 for r in rows)  # global batch 4 over each logged step's seconds
    buckets = [[r[k] for k in r if k.startswith("loss_t")] for r in rows]  # the step's loss by timestep range
    assert all(1 <= len(b) <= 4 for b in buckets) and sum(map(len, buckets)) > len(rows)
    model = load_weights(run / "model.safetensors")  # the EMA weights, rebuilt from the file alone
    assert model.config.num_class_labels == 3
    assert not list((run / "checkpoints").glob(".tmp-*"))
    # Each tensor once per checkpoint: the model in model/, its EMA in ema/, no second copy from Accelerate;
    # every other state file is read back with weights_only=True.
    checkpoint = list_checkpoints(run)[-1]
    weight_files = sorted(str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*.safetensors"))
    assert weight_files == ["ema/diffusion_pytorch_model.safetensors", "model/diffusion_pytorch_model.safetensors"]
    for state_file in checkpoint.glob("*.bin"):
        torch.load(state_file, weights_only=True)


def test_resume_continues_with_identical_losses(tmp_path):
    full = train(tiny(tmp_path, "full", train={"steps": 6}))
    first = train(tiny(tmp_path, "split", train={"steps": 3}))
    assert first.step == 3
    resumed = train(tiny(tmp_path, "split", train={"steps": 6}), resume="latest")
    assert sorted(resumed.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed.losses[step] == full.losses[step]  # exactly: same data, noise, weights and optimizer state
    a, b = full.run_dir / "checkpoints/step-00000006", resumed.run_dir / "checkpoints/step-00000006"
    for name in ("model", "ema"):
        ta = load_file(str(a / name / "diffusion_pytorch_model.safetensors"))
        tb = load_file(str(b / name / "diffusion_pytorch_model.safetensors"))
        assert all(torch.equal(ta[k], tb[k]) for k in ta), name


def test_max_minutes_stops_early_and_finishes_the_run(tmp_path, monkeypatch):
    clock = iter(range(0, 10_000, 30))  # every call to time.time() moves the clock 30 s on
    monkeypatch.setattr("train.loop.monotonic", lambda: float(next(clock)))
    result = train(tiny(tmp_path, train={"steps": 50, "max_minutes": 1.5, "checkpoint_every": 0}))
    assert 1 < result.step < 50 and result.interrupted is None
    assert (result.run_dir / "pipeline/model_index.json").is_file()  # finished like a full run
    assert [p.name for p in list_checkpoints(result.run_dir)] == [f"step-{result.step:08d}"]


def test_time_budget_plans_the_steps_that_fit():
    budget = TimeBudget(minutes=1, max_steps=1000)
    assert budget.plan(1, 1.0) is None                       # the first step only starts the timing (one-off costs)
    assert budget.plan(1 + TIMED_STEPS - 1, 4.0) is None     # too few timed steps yet
    assert budget.plan(1 + TIMED_STEPS, 1.0 + 2 * TIMED_STEPS) == 1 + TIMED_STEPS + (60 - 9) // 2  # 2 s a step
    assert budget.plan(10, 14.0) is None                     # next revision at 25% of the budget
    assert budget.plan(30, 60.0 * 0.26) is not None
    assert TimeBudget(minutes=100, max_steps=40).plan(1, 1.0) is None
    capped = TimeBudget(minutes=100, max_steps=40)
    capped.plan(1, 1.0)
    assert capped.plan(1 + TIMED_STEPS, 2.0) == 40           # never past train.steps
    slow = TimeBudget(minutes=1, max_steps=1000)
    slow.plan(1, 4.0)
    assert slow.plan(2, 10.0) == 2 + (60 - 10) // 6          # 6 s a step: a tenth of the budget gone, plan at once
    resumed = TimeBudget(minutes=1, max_steps=1000, spent_seconds=50.0)
    assert not resumed.out_of_time(9.0) and resumed.out_of_time(10.0)


def _budget_run(tmp_path, monkeypatch, resume=None, **train_values):
    clock = iter(range(0, 100_000))  # every call to time.time() moves the clock 1 s on: a constant time per step
    monkeypatch.setattr("train.loop.monotonic", lambda: float(next(clock)))
    values = {"steps": 10_000, "budget_minutes": 1.0, "checkpoint_every": 0, "log_every": 1, **train_values}
    config = tiny(tmp_path, train=values, optim={"lr_schedule": "cosine", "warmup_steps": 0, "lr": 1e-3})
    return train(config, resume=resume)


def test_budget_minutes_sizes_the_run_so_its_schedule_ends_on_time(tmp_path, monkeypatch):
    result = _budget_run(tmp_path, monkeypatch)
    state = read_state(latest_checkpoint(result.run_dir))
    assert 10 < result.step < 100 and state["planned_steps"] == result.step  # far below train.steps, as planned
    assert 50 <= state["trained_seconds"] <= 62
    lrs = [r["lr"] for r in read_log(result.run_dir) if "lr" in r]
    assert lrs[-1] < 0.02 * 1e-3 < lrs[len(lrs) // 2]  # the cosine schedule decayed to (almost) zero at the end
    assert (result.run_dir / "pipeline/model_index.json").is_file()


def test_a_budgeted_run_resumed_keeps_its_plan_and_its_clock(tmp_path, monkeypatch):
    whole = _budget_run(tmp_path / "whole", monkeypatch)
    first = _budget_run(tmp_path / "halves", monkeypatch, max_minutes=0.5)
    assert first.step < whole.step
    second = _budget_run(tmp_path / "halves", monkeypatch, resume="latest")
    assert abs(second.step - whole.step) <= 3
    state = read_state(latest_checkpoint(second.run_dir))
    assert 50 <= state["trained_seconds"] <= 64 and state["planned_steps"] == second.step
    lrs = [r["lr"] for r in read_log(second.run_dir) if "lr" in r]
    assert lrs[-1] < 0.02 * 1e-3


def test_a_run_folder_is_never_overwritten(tmp_path):
    train(tiny(tmp_path, train={"steps": 3}))
    with pytest.raises(ValueError, match="already holds checkpoints.*--resume latest"):
        train(tiny(tmp_path, train={"steps": 3}))
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        train(tiny(tmp_path, train={"steps": 3}), resume=str(tmp_path / "nowhere"))


def test_crash_while_writing_a_checkpoint_leaves_the_previous_whole(tmp_path, monkeypatch):
    from accelerate import Accelerator

    config = tiny(tmp_path, train={"steps": 6, "checkpoint_every": 3})
    real_save = Accelerator.save_state
    calls = []

    def save_then_crash(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        real_save(self, output_dir, **kwargs)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")

    monkeypatch.setattr(Accelerator, "save_state", save_then_crash)
    with pytest.raises(OSError, match="disk full"):
        train(config)
    monkeypatch.undo()
    run = config.train.output_dir
    assert [p.name for p in list_checkpoints(run)] == ["step-00000003"]   # the half-written step 6 does not count
    assert latest_checkpoint(run).name == "step-00000003"
    resumed = train(config, resume="latest")
    assert resumed.step == 6 and sorted(resumed.losses) == [4, 5, 6]
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))   # the debris is cleaned up


def test_nan_loss_stops_before_touching_the_weights(tmp_path, monkeypatch):
    from train.diffusion import DiffusionTask

    config = tiny(tmp_path, train={"steps": 8, "checkpoint_every": 2})
    real_loss = DiffusionTask.loss
    calls = {"n": 0}

    def poisoned(self, model, batch):
        calls["n"] += 1
        loss = real_loss(self, model, batch)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(DiffusionTask, "loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 5: non-finite loss nan.*last good checkpoint: .*step-00000004.*train.on_nan=skip"):
        train(config)
    run = config.train.output_dir
    assert latest_checkpoint(run).name == "step-00000004"   # nothing written after the NaN
    for folder in list_checkpoints(run):
        for name in ("model", "ema"):
            tensors = load_file(str(folder / name / "diffusion_pytorch_model.safetensors"))
            assert all(torch.isfinite(t).all() for t in tensors.values())


def test_nan_loss_skips_the_step_when_asked(tmp_path, monkeypatch):
    from train.diffusion import DiffusionTask

    config = tiny(tmp_path, train={"steps": 6, "on_nan": "skip", "max_nan_skips": 1})
    real_loss = DiffusionTask.loss
    calls = {"n": 0}

    def poisoned(self, model, batch):
        calls["n"] += 1
        loss = real_loss(self, model, batch)
        return loss * float("inf") if calls["n"] in (3, 5, 6) else loss

    monkeypatch.setattr(DiffusionTask, "loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="2 steps in a row had a non-finite loss"):
        train(config)   # steps 5 and 6 in a row exceed max_nan_skips=1
    calls["n"] = 0

    def nan_once(self, model, batch):
        calls["n"] += 1
        loss = real_loss(self, model, batch)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(DiffusionTask, "loss", nan_once)
    result = train(tiny(tmp_path, "skip", train={"steps": 6, "on_nan": "skip"}))
    assert result.step == 6 and result.nan_skips == 1 and 3 not in result.losses
    tensors = weights(latest_checkpoint(result.run_dir))
    assert all(torch.isfinite(t).all() for t in tensors.values())
    assert read_state(latest_checkpoint(result.run_dir))["nan_skips"] == 1


def test_segmentation_run_reports_dice_iou_and_pixel_error(tmp_path):
    config = tiny(tmp_path, base=TINY_SEGMENTATION, train={"steps": 6},
                  segmentation={"loss": "ce_dice", "weight_map": True, "class_names": ["background", "shape"]},
                  data={"augment": {"hflip": True, "rotate90": True}})
    result = train(config)
    m = result.metrics
    assert {"dice", "iou", "pixel_error", "dice_shape", "iou_background"} <= set(m)
    assert 0 <= m["pixel_error"] <= 1 and 0 <= m["dice"] <= 1
    assert (result.run_dir / "overlays.png").is_file() and (result.run_dir / "model.safetensors").is_file()
    # The saved pipeline (what `unet-diffusion segment` opens) normalises pixels the way training did.
    from pipelines import load_segmentation_pipeline

    pipe = load_segmentation_pipeline(result.run_dir / "pipeline")
    assert (pipe.config.image_mean, pipe.config.image_std) == (0.5, 0.5)
    assert pipe(torch.rand(1, 1, 16, 16)).masks.shape == (1, 16, 16)
    log = [r for r in read_log(result.run_dir) if "eval" in r]
    assert log and log[-1]["eval"]["dice"] == m["dice"]


def test_cli_train_and_demo_in_process(tmp_path, capsys):
    from unet_diffusion.cli import main

    path = write_config(tmp_path / "c.yaml", merged(TINY_DIFFUSION, train={"steps": 2, "output_dir": str(tmp_path / "cli")}))
    assert main(["train", "--config", str(path), "train.steps=3"]) == 0
    assert read_state(latest_checkpoint(tmp_path / "cli"))["step"] == 3
    assert main(["train", "--config", str(path), "optim.lrr=1"]) == 1
    assert "unknown key optim.lrr in optim. Did you mean optim.lr?" in capsys.readouterr().err
    # The demo with the quick-start config, cut down to a few steps of a tiny model.
    overrides = ["train.steps=2", "train.log_every=1", "data.image_size=8", "diffusion.num_samples=4", "diffusion.sample_steps=2",
                 "model.args={channels: [8, 16], blocks_per_level: 1, attention_levels: [], mid_attention: false, "
                 "norm_groups: 4, attention_head_channels: 4, num_class_labels: 3}"]
    assert main(["demo", "--output", str(tmp_path / "demo"), *overrides]) == 0
    assert "demo finished" in capsys.readouterr().out
    assert (tmp_path / "demo" / "samples.png").is_file() and (tmp_path / "demo" / "model.safetensors").is_file()
    # Watching the run: TensorBoard by default when installed, loss.png at the end, `plot` redraws it.
    events = list((tmp_path / "demo" / "logs" / "unet-diffusion").glob("events.out.tfevents.*"))
    assert events and (tmp_path / "demo" / "loss.png").is_file()
    (tmp_path / "demo" / "loss.png").unlink()
    assert main(["plot", str(tmp_path / "demo")]) == 0 and (tmp_path / "demo" / "loss.png").is_file()
    assert main(["plot", str(tmp_path)]) == 1 and "has no training log" in capsys.readouterr().err
    # `unet-diffusion sample` opens the saved pipeline directly (its scheduler says v-prediction, cosine betas).
    assert main(["sample", str(tmp_path / "demo" / "pipeline"), "--out", str(tmp_path / "samples"), "--num-images", "2",
                 "--steps", "2", "--sampler", "ddim", "--class-label", "1", "--no-progress"]) == 0
    assert len(list((tmp_path / "samples").glob("*.png"))) >= 2


# ---------------------------------------------------------------------------- other processes
def _wait_for(predicate, proc, timeout=180.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early with status {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("timed out waiting for the run")


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    run = tmp_path / "run"
    path = write_config(tmp_path / "c.yaml", merged(TINY_DIFFUSION, train={"steps": 100000, "checkpoint_every": 5,
                                                                          "output_dir": str(run)}))
    proc = start_cli(["train", "--config", str(path)], tmp_path / "out.log")
    _wait_for(lambda: latest_checkpoint(run) is not None, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    output = (tmp_path / "out.log").read_text()
    assert "received SIGTERM" in output and "stopped by SIGTERM" in output
    last = read_log(run)[-1]["step"]
    assert read_state(latest_checkpoint(run))["step"] == last   # saved at the step it stopped
    result = train(config_from_dict(merged(TINY_DIFFUSION, train={"steps": last + 2, "output_dir": str(run)})), resume="latest")
    assert sorted(result.losses) == [last + 1, last + 2]


def test_sigkill_during_training_then_resume_matches_an_uninterrupted_run(tmp_path):
    run = tmp_path / "killed"
    values = merged(TINY_DIFFUSION, train={"steps": 100000, "checkpoint_every": 3, "keep_checkpoints": 2, "output_dir": str(run)})
    proc = start_cli(["train", "--config", str(write_config(tmp_path / "c.yaml", values))], tmp_path / "out.log")
    _wait_for(lambda: latest_checkpoint(run) is not None, proc)
    time.sleep(1.0)   # let it run on: the kill may land mid-step or mid-checkpoint
    proc.kill()   # SIGKILL: no handler runs; whatever was being written is left half done
    proc.wait(timeout=30)
    latest = latest_checkpoint(run)
    step = read_state(latest)["step"]
    assert step >= 3 and step % 3 == 0
    assert load_weights_ok(latest)
    resumed = train(config_from_dict(merged(values, train={**values["train"], "steps": step + 3})), resume="latest")
    assert resumed.step == step + 3
    reference = train(config_from_dict(merged(values, train={**values["train"], "steps": step + 3,
                                                              "output_dir": str(tmp_path / "reference")})))
    for s in range(step + 1, step + 4):
        assert resumed.losses[s] == reference.losses[s]


def load_weights_ok(checkpoint) -> bool:
    from unet_diffusion import UNet

    model = UNet.from_pretrained(checkpoint / "model")   # strict: every tensor present, right shapes
    return all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("base", [TINY_DIFFUSION, TINY_SEGMENTATION], ids=["diffusion", "segmentation"])
def test_two_processes_give_the_weights_of_one_with_the_same_global_batch(tmp_path, base):
    values = merged(base, train={"steps": 4, "batch_size": 8, "checkpoint_every": 0, "output_dir": str(tmp_path / "two")})
    path = write_config(tmp_path / "c.yaml", values)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "unet_diffusion.cli", "train", "--config", str(path)]
    proc = subprocess.run(launch, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = train(config_from_dict(merged(values, train={**values["train"], "output_dir": str(tmp_path / "one")})))
    two_losses = {r["step"]: r["loss"] for r in read_log(tmp_path / "two") if "loss" in r}
    assert sorted(two_losses) == [1, 2, 3, 4]
    for s in two_losses:
        assert two_losses[s] == pytest.approx(one.losses[s], rel=1e-5)
    a, b = weights(latest_checkpoint(tmp_path / "one")), weights(latest_checkpoint(tmp_path / "two"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    # The comparison can fail: half the global batch on one process gives other weights.
    half = train(config_from_dict(merged(values, train={**values["train"], "batch_size": 4, "output_dir": str(tmp_path / "half")})))
    c = weights(latest_checkpoint(half.run_dir))
    assert any(not torch.allclose(a[k], c[k], rtol=1e-5, atol=1e-6) for k in a)


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    big = train(tiny(tmp_path, "big", train={"steps": 3, "batch_size": 8, "grad_accum": 1}))
    accumulated = train(tiny(tmp_path, "acc", train={"steps": 3, "batch_size": 4, "grad_accum": 2}))
    for s in (1, 2, 3):
        assert accumulated.losses[s] == pytest.approx(big.losses[s], rel=1e-5)
    a, b = weights(latest_checkpoint(big.run_dir)), weights(latest_checkpoint(accumulated.run_dir))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert read_state(latest_checkpoint(accumulated.run_dir))["micro_batches"] == 6


def test_a_launcher_accumulation_setting_does_not_scale_the_loss_again(tmp_path, monkeypatch):
    plain = train(tiny(tmp_path, "plain", train={"steps": 3, "grad_accum": 2}))
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")  # as some launchers export it
    launched = train(tiny(tmp_path, "launched", train={"steps": 3, "grad_accum": 2}))
    a, b = weights(latest_checkpoint(plain.run_dir)), weights(latest_checkpoint(launched.run_dir))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_a_resume_with_another_grad_accum_steps_on_whole_steps(tmp_path):
    train(tiny(tmp_path, train={"steps": 2, "grad_accum": 2}))
    resumed = train(tiny(tmp_path, train={"steps": 4, "grad_accum": 3}), resume="latest")
    assert sorted(resumed.losses) == [3, 4]
    # 2 steps of 2 micro-batches, then 2 of 3: Accelerate's restored micro-batch counter does not shift the steps.
    assert read_state(latest_checkpoint(resumed.run_dir))["micro_batches"] == 2 * 2 + 2 * 3


def test_every_log_row_goes_through_accelerator_log(tmp_path, monkeypatch):
    from accelerate import Accelerator

    calls = []
    real_log = Accelerator.log

    def recording(self, values, step=None, log_kwargs=None):
        calls.append({"step": step, **values})
        return real_log(self, values, step=step, log_kwargs=log_kwargs)

    monkeypatch.setattr(Accelerator, "log", recording)
    result = train(tiny(tmp_path, train={"steps": 4, "eval_every": 2}, data={"val_size": 8}))
    rows = read_log(result.run_dir)
    assert rows == calls and len(rows) == 6   # 4 losses and 2 evaluations, nothing written beside accelerator.log
    assert [r["step"] for r in rows if "eval" in r] == [2, 4]
    assert {"step", "loss", "lr", "grad_norm", "epoch", "images_per_second", "seconds"} <= set(rows[0])
    assert all(key.startswith("loss_t") for key in set(rows[0]) - {"step", "loss", "lr", "grad_norm", "epoch", "images_per_second", "seconds"})


def test_the_jsonl_tracker_is_an_accelerate_tracker(tmp_path):
    from accelerate import Accelerator

    from train.tracking import JsonlTracker

    accelerator = Accelerator(log_with=[JsonlTracker(tmp_path)])
    accelerator.init_trackers("test")
    accelerator.log({"loss": 0.5, "eval": {"dice": 0.25}}, step=3)
    accelerator.end_training()
    assert read_log(tmp_path) == [{"step": 3, "loss": 0.5, "eval": {"dice": 0.25}}]
    assert accelerator.get_tracker("jsonl").tracker == tmp_path / "log.jsonl"


def test_log_with_names_an_installed_accelerate_tracker(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="train.log_with: unknown tracker 'tensorbord'"):
        train(tiny(tmp_path, train={"log_with": ["tensorbord"]}))
    monkeypatch.setattr("train.tracking.get_available_trackers", lambda: [])
    with pytest.raises(ValueError, match="asks for tensorboard, which is not installed: pip install tensorboard"):
        train(tiny(tmp_path, train={"log_with": ["tensorboard"]}))


def test_rotation_keeps_the_newest_complete_checkpoints(tmp_path):
    config = tiny(tmp_path, train={"steps": 4, "checkpoint_every": 1, "keep_checkpoints": 2})
    train(config)
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in list_checkpoints(config.train.output_dir)] == ["step-00000003", "step-00000004"]
    (root / ".tmp-step-00000009").mkdir()   # debris of a crash mid-write: neither counted nor kept
    resumed = train(tiny(tmp_path, train={"steps": 7, "checkpoint_every": 1, "keep_checkpoints": 2}), resume="latest")
    assert resumed.step == 7
    assert sorted(p.name for p in root.iterdir()) == ["step-00000006", "step-00000007"]


def test_tensorboard_logs_beside_the_jsonl_when_asked(tmp_path):
    pytest.importorskip("tensorboard")
    result = train(tiny(tmp_path, train={"steps": 2, "log_with": ["tensorboard"]}))
    assert [r["step"] for r in read_log(result.run_dir)] == [1, 2]
    assert list((result.run_dir / "logs" / "unet-diffusion").glob("events.out.tfevents.*"))


def test_tensorboard_gets_scalars_and_the_pictures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(tiny(tmp_path, train={"steps": 2}, diffusion={"sample_every": 1}))
    events = EventAccumulator(str(result.run_dir / "logs" / "unet-diffusion")).Reload()
    assert "loss" in events.Tags()["scalars"] and "pictures" in events.Tags()["images"]
    assert [e.step for e in events.Scalars("loss")] == [1, 2]


def test_plots_need_matplotlib_and_say_so(tmp_path, monkeypatch):
    import builtins

    from train.plots import plot_run

    result = train(tiny(tmp_path, train={"steps": 2, "log_with": []}))
    assert (result.run_dir / "loss.png").is_file() and not (result.run_dir / "logs").exists()
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert plot_run(result.run_dir) is None


def test_validation_loss_by_timestep_range(tmp_path):
    result = train(tiny(tmp_path, train={"steps": 2, "eval_every": 2}, data={"val_size": 8}))
    ranges = {k: v for k, v in result.metrics.items() if k.startswith("val_loss_t")}
    assert ranges and set(ranges) <= {"val_loss_t0-24", "val_loss_t25-49", "val_loss_t50-74", "val_loss_t75-99"}
    assert min(ranges.values()) <= result.metrics["val_loss"] <= max(ranges.values())
    logged = [r["eval"] for r in read_log(result.run_dir) if "eval" in r]
    assert logged and set(ranges) <= set(logged[-1])


@pytest.mark.parametrize("base, metric, mode", [(TINY_DIFFUSION, "val_loss", "min"), (TINY_SEGMENTATION, "dice", "max")])
def test_best_metric_keeps_the_pipeline_of_the_best_evaluation(tmp_path, base, metric, mode):
    config = tiny(tmp_path, base=base, train={"steps": 8, "eval_every": 2, "best_metric": metric, "best_mode": mode},
                  data={"val_size": 8})
    result = train(config)
    values = {r["step"]: r["eval"][metric] for r in read_log(result.run_dir) if "eval" in r}
    best_step = None
    for step in sorted(values):  # only a strictly better value replaces the best
        if best_step is None or (values[step] < values[best_step] if mode == "min" else values[step] > values[best_step]):
            best_step = step
    record = json.loads((result.run_dir / "best" / "best.json").read_text())
    assert len(values) == 4 and record["step"] == best_step and record["value"] == values[best_step]
    assert not any(p.name.startswith((".tmp-", ".old-")) for p in result.run_dir.iterdir())
    pipeline_class = DenoisePipeline if base is TINY_DIFFUSION else SegmentationPipeline
    best = pipeline_class.from_pretrained(str(result.run_dir / "best"))  # opens like the final pipeline folder
    if record["step"] == 8:
        final = pipeline_class.from_pretrained(str(result.run_dir / "pipeline"))
        assert all(torch.equal(a, b) for a, b in zip(best.unet.state_dict().values(), final.unet.state_dict().values()))


def test_best_metric_must_be_one_the_evaluation_reports(tmp_path):
    with pytest.raises(ValueError, match=r"train.best_metric=fid is not reported.*val_loss, val_loss_t0-24"):
        train(tiny(tmp_path, train={"best_metric": "fid"}, data={"val_size": 8}))
    with pytest.raises(ValueError, match="needs validation data"):
        train(tiny(tmp_path, name="other", train={"best_metric": "val_loss"}))


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_the_learning_rate_follows_warmup_then_cosine_once_per_optimizer_step(tmp_path, grad_accum):
    import math

    result = train(tiny(tmp_path, train={"steps": 8, "grad_accum": grad_accum, "checkpoint_every": 0},
                        optim={"lr": 1e-3, "lr_schedule": "cosine", "warmup_steps": 3}))
    logged = {r["step"]: r["lr"] for r in read_log(result.run_dir) if "lr" in r}

    def expected(step):  # the rate the next step uses, after `step` steps: linear warm-up, then a half cosine to 0
        if step < 3:
            return 1e-3 * step / 3
        return 1e-3 * 0.5 * (1 + math.cos(math.pi * (step - 3) / (8 - 3)))

    assert sorted(logged) == list(range(1, 9))
    for step, lr in logged.items():
        assert lr == pytest.approx(expected(step), rel=1e-9, abs=1e-15), step
