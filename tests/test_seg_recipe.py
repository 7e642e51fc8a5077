"""nnU-Net's recipe as options of segmentation training: the polynomial learning rate with its exponent and SGD
Nesterov, deep supervision (training-only heads, the saved network unchanged, resume exact), foreground
oversampling of the crops."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from trainkit import TINY_SEGMENTATION, merged

from train.budget import LRPlan, lr_schedule
from train.checkpoint import HEADS_FILE, latest_checkpoint
from train.config import ConfigError, OptimConfig, config_from_dict
from train.data import Examples, SyntheticShapes
from train.deep_supervision import DeepSupervision, level_weights, supervised_levels
from train.loop import Trainer, train
from train.segmentation import SegmentationTask
from train.transforms import JointTransform, crop_corner
from unet_diffusion.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

THREE_LEVELS = {"preset": "seg-small", "args": {"channels": [8, 16, 16], "norm_groups": 4}}


def seg_config(tmp_path=None, name="run", **sections):
    values = merged(TINY_SEGMENTATION, **sections)
    if tmp_path is not None:
        values["train"] = {**values["train"], "output_dir": str(tmp_path / name)}
    return config_from_dict(values)


# ---------------------------------------------------------------------------- polynomial LR, Nesterov
def test_polynomial_schedule_with_lr_power_is_nnunets_poly():
    steps = 50
    plan = LRPlan(OptimConfig(lr_schedule="polynomial", lr_power=0.9), steps)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-2)
    schedule = lr_schedule(optimizer, plan)
    for step in range(steps + 1):
        expected = 1e-2 * (1 - step / steps) ** 0.9                # nnU-Net's PolyLRScheduler
        assert schedule.get_last_lr()[0] == pytest.approx(expected, abs=1e-2 * 1e-6)
        optimizer.step()
        schedule.step()
    linear = LRPlan(OptimConfig(lr_schedule="polynomial"), steps)  # the default power: a straight line
    assert linear(25) == pytest.approx(0.5, abs=1e-6) and plan(25) == pytest.approx(0.5**0.9, abs=1e-6)


def test_lr_power_and_nesterov_are_refused_where_they_do_not_apply():
    with pytest.raises(ConfigError, match="lr_power"):
        seg_config(optim={"lr_schedule": "cosine", "lr_power": 0.9})
    with pytest.raises(ConfigError, match="lr_power must be positive"):
        seg_config(optim={"lr_schedule": "polynomial", "lr_power": 0.0})
    with pytest.raises(ConfigError, match="nesterov"):
        seg_config(optim={"optimizer": "adamw", "nesterov": True})
    with pytest.raises(ConfigError, match="nesterov"):
        seg_config(optim={"optimizer": "sgd", "momentum": 0.0, "nesterov": True})


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_takes_nesterov_from_the_config(nesterov):
    config = seg_config(optim={"optimizer": "sgd", "lr": 1e-2, "momentum": 0.99, "nesterov": nesterov})
    optimizer = Trainer._optimizer(SimpleNamespace(config=config), torch.nn.Linear(2, 2))
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD) and group["nesterov"] is nesterov and group["momentum"] == 0.99


# ---------------------------------------------------------------------------- deep supervision
def test_level_weights_halve_per_level_leave_out_the_lowest_and_sum_to_one():
    assert supervised_levels(5) == [1, 2, 3] and supervised_levels(2) == []
    assert level_weights(5) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    assert level_weights(3) == pytest.approx([2 / 3, 1 / 3])


def test_deep_supervision_heads_read_the_decoder_maps_and_leave_the_unet_as_it_is():
    config = seg_config(model=THREE_LEVELS, segmentation={"deep_supervision": True})
    task = SegmentationTask(config)
    model = task.build_model()
    assert isinstance(model, DeepSupervision) and list(model.heads) == ["level1"]
    image = torch.randn(2, 1, 16, 16)
    full, level1 = model(image)
    assert full.shape == (2, 2, 16, 16) and level1.shape == (2, 2, 8, 8)
    torch.testing.assert_close(full, model.unet(image).sample)  # the UNet alone computes the same
    assert model._maps is None                                   # and the hooks kept nothing from it
    model.unet.enable_gradient_checkpointing()                   # the maps are captured once, not on recomputation
    sum(output.square().mean() for output in model(image)).backward()
    assert model.heads["level1"].weight.grad.abs().sum() > 0 and model._maps is None


def test_deep_supervision_loss_is_the_weighted_sum_over_resolutions():
    config = seg_config(model=THREE_LEVELS, segmentation={"deep_supervision": True})
    task = SegmentationTask(config)
    model = task.build_model()
    mask = torch.randint(2, (2, 16, 16))
    batch = {"image": torch.randn(2, 1, 16, 16), "mask": mask, "weights": torch.ones(2, 16, 16)}
    full, level1 = model(batch["image"])
    expected = 2 / 3 * F.cross_entropy(full, mask) + 1 / 3 * F.cross_entropy(level1, mask[:, ::2, ::2])  # nearest: every other pixel
    torch.testing.assert_close(task.loss(model, batch), expected)


def test_deep_supervision_trains_saves_the_plain_network_and_resumes_exactly(tmp_path):
    sections = {"model": THREE_LEVELS, "segmentation": {"deep_supervision": True, "overlay_every": 0},
                "ema": {"enabled": True, "decay": 0.9}}
    steps = {"steps": 4, "grad_accum": 2, "checkpoint_every": 2}
    full = train(seg_config(tmp_path, "full", train=steps, **sections))
    plain = train(seg_config(tmp_path, "plain", train=steps, model=THREE_LEVELS, ema={"enabled": True, "decay": 0.9}))
    # The saved network is what a run without the option saves: the same names and shapes, the same config.
    a = load_file(str(full.run_dir / "pipeline/unet/diffusion_pytorch_model.safetensors"))
    b = load_file(str(plain.run_dir / "pipeline/unet/diffusion_pytorch_model.safetensors"))
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert (full.run_dir / "pipeline/unet/config.json").read_text() == (plain.run_dir / "pipeline/unet/config.json").read_text()
    assert full.losses != plain.losses  # the auxiliary losses count
    assert (latest_checkpoint(full.run_dir) / HEADS_FILE).is_file()
    # Stopped at step 2 and resumed: the heads, their optimizer state and the EMA come back, so the run is the same.
    train(seg_config(tmp_path, "split", train={**steps, "steps": 2}, **sections))
    resumed = train(seg_config(tmp_path, "split", train=steps, **sections), resume="latest")
    assert [resumed.losses[s] for s in (3, 4)] == [full.losses[s] for s in (3, 4)]
    for name in ("model/diffusion_pytorch_model.safetensors", "ema/diffusion_pytorch_model.safetensors", HEADS_FILE):
        x, y = load_file(str(latest_checkpoint(full.run_dir) / name)), load_file(str(latest_checkpoint(resumed.run_dir) / name))
        assert all(torch.equal(x[k], y[k]) for k in x), name
    # A checkpoint of a run without deep supervision cannot be resumed with it (its optimizer has no heads).
    with pytest.raises(InputError, match="without segmentation.deep_supervision"):
        train(seg_config(tmp_path, "plain", train={**steps, "steps": 6}, **sections), resume="latest")


@pytest.mark.parametrize("model, data, match", [
    ({"preset": "seg-small", "args": {"channels": [8, 16], "norm_groups": 4}}, {}, "at least 3 levels"),
    ({"preset": "seg-small", "args": {"channels": [8, 16, 16], "norm_groups": 4, "padding": "valid"}}, {}, "same padding"),
    ({"preset": "seg-small", "args": {"channels": [8, 16, 16], "norm_groups": 4, "pad_input": True}}, {"image_size": 18},
     "multiples of 4"),
])
def test_deep_supervision_is_refused_where_it_cannot_apply(model, data, match):
    with pytest.raises(ConfigError, match=match):
        seg_config(model=model, data=data, segmentation={"deep_supervision": True})


# ---------------------------------------------------------------------------- oversampling
def test_crop_corner_without_oversampling_draws_the_plain_crop():
    mask, weights = torch.zeros(40, 30, dtype=torch.long), torch.ones(40, 30)
    torch.manual_seed(3)
    corner = crop_corner(mask, weights, (16, 16))
    torch.manual_seed(3)
    assert corner == [int(torch.randint(40 - 16 + 1, ()).item()), int(torch.randint(30 - 16 + 1, ()).item())]


def test_forced_crops_hold_the_class_and_unforced_ones_mostly_do_not():
    mask = torch.zeros(64, 64, dtype=torch.long)
    mask[50, 7] = 1                                                             # one pixel of the rare class
    joint = JointTransform(16, 16, config_from_dict({}).data.augment, oversample=1.0, oversample_class=1)
    plain = JointTransform(16, 16, config_from_dict({}).data.augment)
    image = torch.rand(1, 64, 64)
    for seed in range(30):
        torch.manual_seed(seed)
        assert (joint(image, mask)[1] == 1).any()
    hits = 0
    for seed in range(30):
        torch.manual_seed(seed)
        hits += int((plain(image, mask)[1] == 1).any())
    assert hits < 15
    weights = torch.ones(64, 64)
    weights[50, 7] = 0                                      # a pixel left out of the loss does not count as the class
    torch.manual_seed(0)
    left_out = crop_corner(mask, weights, (16, 16), 1.0, 1)
    torch.manual_seed(0)
    assert left_out == crop_corner(torch.zeros_like(mask), weights, (16, 16), 1.0, 1)  # a plain crop, as without the class


def test_oversampled_crops_are_a_function_of_the_seed_epoch_and_example():
    config = seg_config(data={"oversample": 0.5, "oversample_class": 1})
    task = SegmentationTask(config)
    source = SyntheticShapes(32, 8, channels=1, masks=True, seed=0)
    examples = Examples(source, list(range(8)), task.prepare, seed=5)
    again = Examples(source, list(range(8)), task.prepare, seed=5)
    for key in [(0, 3), (2, 3), (1, 6)]:
        assert torch.equal(examples[key]["mask"], again[key]["mask"]) and torch.equal(examples[key]["image"], again[key]["image"])
    assert any(not torch.equal(examples[(e, 3)]["image"], examples[(0, 3)]["image"]) for e in (1, 2, 3))


def test_oversampling_options_are_checked():
    with pytest.raises(ConfigError, match="oversample_class"):
        seg_config(data={"oversample": 0.33})
    with pytest.raises(ConfigError, match="not a class"):
        seg_config(data={"oversample": 0.33, "oversample_class": 2})
    with pytest.raises(ConfigError, match="fraction"):
        seg_config(data={"oversample": 1.5, "oversample_class": 1})
    with pytest.raises(ConfigError, match="task: segmentation"):
        config_from_dict({"data": {"oversample": 0.33, "oversample_class": 1}})
