"""Data: joint transforms keep image and mask aligned, sources read and name bad files, the order shards."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.tiling import mirror_pad
from train.config import AugmentConfig, load_config
from train.data import (
    BadImageError,
    DatasetsSource,
    ExampleOrder,
    Examples,
    ImageMaskPairs,
    SyntheticShapes,
    check_images,
    split_indices,
)
from train.transforms import JointTransform


def blobs(size: int = 64, seed: int = 0) -> torch.Tensor:
    """A random binary pattern with structure at several scales (a shift of a few pixels breaks it)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 1, size // 8, size // 8, generator=g)
    coarse = torch.nn.functional.interpolate(noise, size=size, mode="bilinear", align_corners=False)[0, 0]
    return (coarse > 0.5).long()


def agreement(image: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor, margin: int) -> float:
    inner = image[0, margin:image.shape[1] - margin, margin:image.shape[2] - margin] if margin else image[0]
    keep = valid > 0
    return ((inner > 0.5).long() == mask)[keep].float().mean().item()


@pytest.mark.parametrize("augment", [
    AugmentConfig(hflip=True, vflip=True, rotate90=True),
    AugmentConfig(hflip=True, rotation=30.0),
    AugmentConfig(elastic_std=4.0, elastic_grid=3, rotate90=True),
], ids=["flips-rot90", "rotation", "elastic"])
def test_joint_transform_keeps_image_and_mask_aligned(augment):
    mask = blobs(64)
    image = mask[None].float()                       # the image IS the mask: alignment is checkable pixel by pixel
    weights = 2.0 * mask.float() + 1.0               # the weight map must move with them too
    transform = JointTransform(out_size=40, in_size=48, augment=augment)
    exact = not (augment.rotation or augment.elastic_std)
    for seed in range(6):
        torch.manual_seed(seed)
        img, m, w = transform(image, mask, weights)
        assert img.shape == (1, 48, 48) and m.shape == (40, 40) and w.shape == (40, 40)
        score = agreement(img, m, w, margin=4)
        assert score == 1.0 if exact else score > 0.97, score
        keep = w > 0
        assert torch.equal(w[keep], (2 * m.float() + 1)[keep])
        # A check that can fail: the same crop shifted by 3 pixels disagrees a lot.
        assert agreement(torch.roll(img, 3, dims=2), m, w, margin=4) < 0.95


def test_rotation_corners_are_marked_invalid():
    mask = torch.ones(32, 32, dtype=torch.long)
    torch.manual_seed(0)
    transform = JointTransform(32, 32, AugmentConfig(rotation=45.0))
    fractions = [(transform(mask[None].float(), mask)[2] == 0).float().mean().item() for _ in range(8)]
    assert max(fractions) > 0.02  # some rotation left corners without labels, and the loss will skip them


def test_mirror_pad_reflects_beyond_the_image():
    x = torch.arange(4.0).reshape(1, 1, 4)
    assert mirror_pad(x.expand(1, 4, 4).clone(), (2, 2), (2, 2))[0, 2].tolist() == [2, 1, 0, 1, 2, 3, 2, 1]
    assert mirror_pad(torch.rand(1, 3, 3), (7, 7), (7, 7)).shape == (1, 17, 17)  # more than the image: reflects repeatedly


def test_training_crops_are_mirrored_like_the_pipelines_tiles():
    """One mirror_pad (pipelines.tiling) for the valid-padding training crops and the overlap-tile inference."""
    image, mask = torch.rand(1, 8, 8), torch.zeros(8, 8, dtype=torch.long)
    crop, _, _ = JointTransform(out_size=8, in_size=14, augment=AugmentConfig())(image, mask)
    assert torch.equal(crop, mirror_pad(image[None], (3, 3), (3, 3))[0])


def test_training_overlays_use_the_pipelines_palette():
    """train.segmentation.overlay and the `segment --overlay` pictures tint a class in the same colour."""
    from pipelines.images import PALETTE
    from pipelines.images import overlay as pipeline_overlay
    from train.segmentation import overlay

    classes = torch.tensor([[0, 1, 2], [3, 9, 0]])
    image = torch.rand(3, 2, 3) * 2 - 1                                    # [-1, 1], as training sees it
    picture = overlay(image, classes)                                      # (3, H, W) in [0, 1]
    pil = Image.fromarray((((image + 1) / 2).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    theirs = np.asarray(pipeline_overlay(pil, classes.numpy()), dtype=np.float32) / 255
    np.testing.assert_allclose(picture.permute(1, 2, 0).numpy(), theirs, atol=1.5 / 255)
    assert torch.allclose(picture[:, 0, 1], 0.5 * (image[:, 0, 1] + 1) / 2 + 0.5 * PALETTE[0])


def test_grid_elastic_draws_the_papers_displacements():
    from train.transforms import GridElastic

    torch.manual_seed(0)
    fields = [GridElastic(std=10.0, grid=3).make_params([torch.zeros(1, 100, 80)])["displacement"] for _ in range(200)]
    field = torch.cat(fields)                                           # (200, 100, 80, 2) in [-1, 1] units
    pixels = field * torch.tensor([80 / 2, 100 / 2])                    # back to pixels (x, y)
    assert field.shape == (200, 100, 80, 2)
    corners = pixels[:, [0, 0, -1, -1], [0, -1, 0, -1]]                 # the grid's corner points: N(0, 10 px)
    assert 8.5 < corners.std().item() < 11.5
    assert (pixels[:, 1:] - pixels[:, :-1]).abs().max() < 3              # smooth: neighbours move together


def test_order_is_the_same_global_batches_on_any_number_of_processes():
    one = list(itertools.islice(iter(ExampleOrder(10, 4, 0, 1, seed=3)), 16))   # 4 global batches (2 epochs)
    halves = [list(itertools.islice(iter(ExampleOrder(10, 4, r, 2, seed=3)), 8)) for r in range(2)]
    for b in range(4):
        assert sorted(one[4 * b:4 * b + 4]) == sorted(halves[0][2 * b:2 * b + 2] + halves[1][2 * b:2 * b + 2])
    assert {e for e, _ in one} == {0, 1} and len(set(one[:8])) == 8   # 2 batches per epoch, no repeats inside one
    # Starting at micro-batch 3 continues exactly where an earlier run left off.
    assert list(itertools.islice(iter(ExampleOrder(10, 4, 0, 1, seed=3, start=3)), 4)) == one[12:16]
    with pytest.raises(ValueError, match="must divide evenly over 3 processes"):
        ExampleOrder(10, 4, 0, 3, seed=0)


def test_examples_are_deterministic_per_epoch_and_index():
    from trainkit import TINY_DIFFUSION

    from train.config import config_from_dict
    from train.diffusion import DiffusionTask

    task = DiffusionTask(config_from_dict(TINY_DIFFUSION))
    examples = Examples(SyntheticShapes(8, 10), list(range(10)), task.prepare, seed=0)
    a, b, c = examples[(0, 3)], examples[(0, 3)], examples[(1, 3)]
    assert torch.equal(a["noise"], b["noise"]) and torch.equal(a["t"], b["t"])
    assert not torch.equal(a["noise"], c["noise"])
    state = torch.get_rng_state()
    examples[(0, 4)]
    assert torch.equal(state, torch.get_rng_state())  # the global generator is left as it was


def test_split_is_deterministic_and_checked():
    train, val = split_indices(list(range(25)), 5, seed=0)
    assert len(val) == 5 and not set(train) & set(val) and split_indices(list(range(25)), 5, seed=0)[1] == val
    assert len(split_indices(list(range(20)), 0.25, seed=0)[1]) == 5
    assert split_indices(list(range(10, 35)), [20, 21, 22, 23, 24], seed=0) == (list(range(10, 30)), list(range(30, 35)))
    with pytest.raises(ValueError, match="positions must lie in 0..24"):
        split_indices(list(range(25)), [3, 25], seed=0)
    with pytest.raises(ValueError, match="leaves 0 of 3 examples for training"):
        split_indices([0, 1, 2], 3, seed=0)


def _pairs(tmp_path, count=3):
    (tmp_path / "image").mkdir()
    (tmp_path / "label").mkdir()
    for i in range(count):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "image" / f"{i:02d}.png")
        Image.fromarray((np.arange(64).reshape(8, 8) % 2 * 255).astype(np.uint8)).save(tmp_path / "label" / f"{i:02d}.png")
    return load_config(None, ["task=segmentation", "model.preset=seg-small", "data.source=pairs", f"data.image_dir={tmp_path / 'image'}",
                              f"data.mask_dir={tmp_path / 'label'}", "data.mask_values=[0, 255]", "data.channels=1"]).data


def test_pairs_read_and_map_mask_values(tmp_path):
    source = ImageMaskPairs(_pairs(tmp_path))
    example = source.load(1)
    assert len(source) == 3 and example.image.mode == "L"
    assert set(np.unique(example.mask)) == {0, 1}


def test_bad_image_is_named_or_skipped_and_counted(tmp_path):
    data = _pairs(tmp_path)
    (tmp_path / "image" / "01.png").write_bytes(b"not a png at all")
    source = ImageMaskPairs(data)
    with pytest.raises(BadImageError, match=r"cannot read image .*image/01.png.*on_bad_image=skip"):
        check_images(source, [0, 1, 2], "error")
    messages = []
    assert check_images(source, [0, 1, 2], "skip", messages.append) == [0, 2]
    assert "skipped 1 unreadable example(s) of 3" in messages[0] and "01.png" in messages[0]


def test_mask_with_unexpected_values_is_named(tmp_path):
    data = _pairs(tmp_path)
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / "label" / "02.png")
    with pytest.raises(BadImageError, match=r"label/02.png has pixel values \[128\] that are not in data.mask_values"):
        ImageMaskPairs(data).load(2)


def test_unpaired_files_are_listed(tmp_path):
    data = _pairs(tmp_path)
    (tmp_path / "label" / "01.png").unlink()
    with pytest.raises(ValueError, match=r"without a partner: \['01'\]"):
        ImageMaskPairs(data)


def test_parquet_dataset_source_reads_images_and_labels_and_names_bad_rows(tmp_path):
    import datasets

    images = [Image.fromarray(np.full((6, 6, 3), 50 * i, np.uint8)) for i in range(3)]
    ds = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2]}, features=datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)}))
    ds.to_parquet(str(tmp_path / "good.parquet"))
    config = load_config(None, ["data.source=datasets", "data.path=parquet", f"data.data_files={tmp_path / 'good.parquet'}",
                                "data.label_column=label"])
    source = DatasetsSource(config.data)
    example = source.load(2)
    assert len(source) == 3 and example.label == 2 and example.image.size == (6, 6)
    assert np.array(example.image)[0, 0, 0] == 100

    rows = ds.cast_column("image", datasets.Image(decode=False)).to_list()
    rows[1]["image"] = {"bytes": b"broken", "path": "cat.png"}
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "bad.parquet"))
    bad = DatasetsSource(load_config(None, ["data.source=datasets", "data.path=parquet",
                                            f"data.data_files={tmp_path / 'bad.parquet'}"]).data)
    with pytest.raises(BadImageError, match=r"cannot read image parquet\[train\] row 1 \(cat.png\)"):
        check_images(bad, [0, 1, 2], "error")

    with pytest.raises(ValueError, match=r"data.label_column='digit' is not a column .* its columns are \['image', 'label'\]"):
        DatasetsSource(load_config(None, ["data.source=datasets", "data.path=parquet", "data.label_column=digit",
                                          f"data.data_files={tmp_path / 'good.parquet'}"]).data)


def test_diffusion_examples_are_checked_by_the_networks_rules():
    """A label or context the model cannot take fails on reading the example, with the network's message."""
    from diffusers.training_utils import compute_snr

    from train.data import RawExample
    from train.diffusion import DiffusionTask

    args = ("{channels: [8, 16], blocks_per_level: 1, attention_levels: [1], mid_attention: false, norm_groups: 4, "
            "attention_head_channels: 4, num_class_labels: 3, cross_attention_levels: [1], context_dim: 8}")
    task = DiffusionTask(load_config(None, ["task=diffusion", "data.image_size=8", "model.preset=tiny", f"model.args={args}"]))
    image, context = Image.new("RGB", (8, 8)), np.zeros((2, 8), dtype=np.float32)
    example = task.prepare(RawExample(image, label=2, context=context), 0)
    assert example["label"].item() in (2, 3) and example["context"].shape == (2, 8)
    with pytest.raises(ValueError, match=r"^example 5: this model is class-conditional: pass class_labels.*data.label_column"):
        task.prepare(RawExample(image, context=context), 5)
    with pytest.raises(ValueError, match=r"^example 5: class_labels must lie in \[0, 4\)"):
        task.prepare(RawExample(image, label=7, context=context), 5)
    with pytest.raises(ValueError, match=r"^example 5 has label 3, the null label"):
        task.prepare(RawExample(image, label=3, context=context), 5)
    with pytest.raises(ValueError, match=r"^example 5: encoder_hidden_states must have shape \(1, L, 8\); got \(1, 2, 6\)"):
        task.prepare(RawExample(image, label=0, context=np.zeros((2, 6), dtype=np.float32)), 5)
    # Min-SNR weighting reads diffusers' compute_snr: alpha_bar / (1 - alpha_bar).
    t = torch.arange(task.scheduler.config.num_train_timesteps)
    alpha_bar = task.scheduler.alphas_cumprod
    torch.testing.assert_close(compute_snr(task.scheduler, t), alpha_bar / (1 - alpha_bar), rtol=1e-6, atol=0)


def test_logit_normal_timesteps_favour_the_middle_and_validation_stays_uniform():
    from trainkit import TINY_DIFFUSION, merged

    from train.config import ConfigError, config_from_dict
    from train.diffusion import DiffusionTask

    def middle_share(task, prepare):
        torch.manual_seed(0)
        steps = task.config.diffusion.num_train_timesteps
        ts = torch.stack([prepare(SyntheticShapes(8, 1).load(0), 0)["t"] for _ in range(2000)])
        assert ts.dtype == torch.int64 and 0 <= ts.min() and ts.max() < steps
        return ((ts >= steps // 4) & (ts < 3 * steps // 4)).float().mean().item()

    uniform = DiffusionTask(config_from_dict(TINY_DIFFUSION))
    logit = DiffusionTask(config_from_dict(merged(TINY_DIFFUSION, diffusion={**TINY_DIFFUSION["diffusion"],
                                                                           "timestep_sampling": "logit_normal"})))
    assert abs(middle_share(uniform, uniform.prepare) - 0.5) < 0.05
    assert abs(middle_share(logit, logit.prepare) - 0.73) < 0.05  # P(|N(0, 1)| < logit(3/4) = 1.10) = 0.73
    assert abs(middle_share(logit, logit.prepare_eval) - 0.5) < 0.05
    shifted = DiffusionTask(config_from_dict(merged(TINY_DIFFUSION, diffusion={
        **TINY_DIFFUSION["diffusion"], "timestep_sampling": "logit_normal", "logit_mean": -3.0, "logit_std": 0.1})))
    torch.manual_seed(0)
    assert shifted.prepare(SyntheticShapes(8, 1).load(0), 0)["t"] < 10  # sigmoid(-3) T = 4.7
    with pytest.raises(ConfigError, match="diffusion.logit_std must be positive"):
        config_from_dict(merged(TINY_DIFFUSION, diffusion={"logit_std": 0.0}))
    with pytest.raises(ConfigError, match="timestep_sampling"):
        config_from_dict(merged(TINY_DIFFUSION, diffusion={"timestep_sampling": "lognormal"}))
