"""Training a 3D segmenter on volumes: .npy volumes and stacks of PNG slices, 3D crops and flips, a held-out part."""

import numpy as np
import PIL.Image
import pytest
import torch
from trainkit import merged

from pipelines import SegmentationPipeline
from train.config import config_from_dict
from train.data import Examples, Volumes, open_source
from train.loop import read_log, train
from train.segmentation import SegmentationTask
from train.transforms import VolumeTransform
from unet_diffusion.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

VOLUME_SEGMENTATION = {
    "task": "segmentation",
    "model": {"preset": None, "args": {"dims": 3, "in_channels": 1, "out_channels": 2, "head": "segment", "channels": [4, 8], "norm_groups": 4,
                       "blocks_per_level": 1, "skips": "level", "time_embedding": None, "mid_attention": False}},
    "data": {"source": "volumes", "channels": 1, "image_size": 8, "crop_depth": 4, "split_depth_at": [8], "val_size": [1],
             "augment": {"hflip": True, "vflip": True, "dflip": True, "rotate90": True}},
    "segmentation": {"overlay_every": 0, "num_overlays": 1},
    "optim": {"lr": 3e-3},
    "ema": {"enabled": False},
    "train": {"steps": 4, "batch_size": 2, "log_every": 1, "checkpoint_every": 0, "eval_every": 0, "progress_bar": False},
}


def balls(depth=12, side=16, seed=0):
    """A volume of bright balls on a noisy background, and its labels (1 inside a ball)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:depth, 0:side, 0:side]
    labels = np.zeros((depth, side, side), dtype=np.uint8)
    for _ in range(4):
        c = rng.uniform([0, 0, 0], [depth, side, side])
        labels[((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < rng.uniform(4, 16)] = 1
    volume = np.clip(0.3 + 0.5 * labels + rng.normal(0, 0.05, labels.shape), 0, 1)
    return (volume * 255).astype(np.uint8), labels


def write_slices(folder, stack):
    folder.mkdir(parents=True)
    for i, plane in enumerate(stack):
        PIL.Image.fromarray(plane).save(folder / f"{i:02d}.png")


def volume_config(tmp_path, image_dir, mask_dir, **sections):
    values = merged(VOLUME_SEGMENTATION, **sections)
    values["data"] = {**values["data"], "image_dir": str(image_dir), "mask_dir": str(mask_dir)}
    values["train"] = {**values["train"], "output_dir": str(tmp_path / "run")}
    return config_from_dict(values)


def test_a_stack_of_png_slices_is_one_volume_cut_into_a_training_and_a_held_out_part(tmp_path):
    volume, labels = balls()
    write_slices(tmp_path / "image", volume)
    write_slices(tmp_path / "label", labels * 255)
    config = volume_config(tmp_path, tmp_path / "image", tmp_path / "label", data={"mask_values": [0, 255]})
    source = open_source(config)
    assert isinstance(source, Volumes) and len(source) == 2
    first, second = source.load(0), source.load(1)
    assert first.image.shape == (1, 8, 16, 16) and second.image.shape == (1, 4, 16, 16)
    np.testing.assert_allclose(second.image[0], volume[8:] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(second.mask, labels[8:])


def test_a_3d_segmenter_trains_on_npy_volumes_and_its_pipeline_segments_a_volume(tmp_path):
    for folder in ("image", "label"):
        (tmp_path / folder).mkdir()
    for i in range(2):
        volume, labels = balls(seed=i)
        np.save(tmp_path / "image" / f"v{i}.npy", volume)
        np.save(tmp_path / "label" / f"v{i}.npy", labels)
    config = volume_config(tmp_path, tmp_path / "image", tmp_path / "label", train={"steps": 6, "eval_every": 3})
    result = train(config)
    rows = read_log(result.run_dir)
    evals = [row["eval"] for row in rows if "eval" in row]
    assert evals and {"dice", "pixel_error"} <= set(evals[-1])
    assert (tmp_path / "run" / "overlays.png").is_file()
    pipe = SegmentationPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    volume, _ = balls(depth=9, side=13, seed=5)
    out = pipe(volume)
    assert out.masks.shape == (1, 9, 13, 13) and out.probabilities.shape == (1, 2, 9, 13, 13)


def test_crops_per_example_draws_different_crops_of_one_volume(tmp_path):
    volume, labels = balls()
    write_slices(tmp_path / "image", volume)
    write_slices(tmp_path / "label", labels * 255)
    config = volume_config(tmp_path, tmp_path / "image", tmp_path / "label", data={"mask_values": [0, 255], "crops_per_example": 3})
    examples = Examples(open_source(config), [0], SegmentationTask(config).prepare, seed=0, repeats=3)
    assert len(examples) == 3  # the one training part, three times an epoch
    crops = [examples[(0, i)]["image"] for i in range(3)]
    assert not torch.equal(crops[0], crops[1]) and not torch.equal(crops[1], crops[2])
    assert train(config).step == 4  # a batch of 2 from one training part: only with several crops of it


def test_volume_crops_move_the_labels_with_the_voxels():
    torch.manual_seed(0)
    from train.config import AugmentConfig

    transform = VolumeTransform((4, 8, 8), (4, 8, 8), AugmentConfig(hflip=True, vflip=True, dflip=True, rotate90=True))
    image = torch.rand(1, 6, 12, 12)
    mask = (image[0] > 0.5).long()
    for _ in range(5):
        crop, labels, weights = transform(image, mask)
        assert crop.shape == (1, 4, 8, 8) and labels.shape == weights.shape == (4, 8, 8)
        assert torch.equal((crop[0] > 0.5).long(), labels)
    with pytest.raises(InputError, match="volumes take flips"):
        VolumeTransform((4, 8, 8), (4, 8, 8), AugmentConfig(rotation=10.0))


def test_3d_elastic_deformation_moves_labels_with_the_voxels_and_drops_what_it_invents():
    from train.config import AugmentConfig

    torch.manual_seed(0)
    volume, labels = balls(depth=12, side=16)
    image, mask = torch.from_numpy(volume[None] / 255.0).float(), torch.from_numpy(labels).long()
    still = VolumeTransform((12, 16, 16), (12, 16, 16), AugmentConfig(elastic_std=0.0))(image, mask)
    assert torch.equal(still[0], image) and torch.equal(still[1], mask)
    warped, warped_mask, weights = VolumeTransform((12, 16, 16), (12, 16, 16), AugmentConfig(elastic_std=3.0))(image, mask)
    assert not torch.equal(warped, image)
    kept = weights > 0
    assert 0.5 < kept.float().mean() < 1.0  # some voxels came from outside the volume and are left out
    # Labels follow the voxels: bright (ball) voxels of the warped volume are labelled 1 where the weights keep them.
    agree = ((warped[0] > 0.55) == (warped_mask == 1))[kept].float().mean()
    assert agree > 0.9


def test_a_3d_model_on_2d_data_and_a_2d_model_on_volumes_are_refused(tmp_path):
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="set data.source to 'volumes'"):
        SegmentationTask(config_from_dict(merged(VOLUME_SEGMENTATION, data={"source": "synthetic", "image_size": 8})))
    two_d = merged(VOLUME_SEGMENTATION)
    two_d["model"] = {"preset": None, "args": {**two_d["model"]["args"], "dims": 2}}
    with pytest.raises(ConfigError, match=r"trains a 3D model \(model.args.dims: 3\)"):
        SegmentationTask(config_from_dict(two_d))


def signal_config(tmp_path, path, **data):
    values = {
        "task": "diffusion",
        "model": {"preset": None, "args": {"dims": 1, "channels": [8, 16], "norm_groups": 4, "blocks_per_level": 1,
                                           "mid_attention": False, "num_class_labels": 2}},
        "data": {"source": "arrays", "data_files": str(path), "image_column": "signals", "label_column": "labels",
                 "image_size": 16, "channels": 1, **data},
        "diffusion": {"num_train_timesteps": 100, "sample_every": 0, "num_samples": 4, "sample_steps": 3},
        "optim": {"lr": 1e-3},
        "ema": {"decay": 0.9},
        "train": {"steps": 4, "batch_size": 4, "log_every": 1, "checkpoint_every": 0, "progress_bar": False,
                  "output_dir": str(tmp_path / "run")},
    }
    return config_from_dict(values)


def test_a_1d_denoiser_trains_on_arrays_and_samples_signals_through_the_cli(tmp_path):
    from unet_diffusion.cli import main

    phase = np.linspace(0, 2 * np.pi, 16)
    labels = np.arange(32) % 2
    signals = np.stack([np.sin(phase * (1 + k) + i) for i, k in enumerate(labels)]).astype(np.float32)  # (32, 16) in [-1, 1]
    np.savez(tmp_path / "waves.npz", signals=signals, labels=labels)
    result = train(signal_config(tmp_path, tmp_path / "waves.npz"))
    assert result.step == 4
    samples = np.load(result.run_dir / "samples.npy")
    assert samples.shape == (4, 1, 16) and 0 <= samples.min() and samples.max() <= 1
    code = main(["sample", str(result.run_dir / "pipeline"), "--num-images", "2", "--steps", "2", "--class-label", "1",
                 "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0 and np.load(tmp_path / "out" / "00001.npy").shape == (16,)


def test_arrays_out_of_range_or_of_the_wrong_size_are_refused(tmp_path):
    np.savez(tmp_path / "loud.npz", signals=np.full((8, 16), 3.0, dtype=np.float32), labels=np.zeros(8, dtype=np.int64))
    with pytest.raises(InputError, match=r"floats in \[-1, 1\]"):
        train(signal_config(tmp_path, tmp_path / "loud.npz"))
    np.savez(tmp_path / "long.npz", signals=np.zeros((8, 20), dtype=np.float32), labels=np.zeros(8, dtype=np.int64))
    with pytest.raises(InputError, match=r"this run takes \(1, 16\)"):
        train(signal_config(tmp_path, tmp_path / "long.npz"))
