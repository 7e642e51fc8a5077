"""Sampling signals and volumes, segmenting them (overlap-tile and sliding window in 3D), and the CLI on arrays."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from pipelines import DenoisePipeline, SegmentationPipeline
from pipelines.tiling import mirror_pad, sliding_window
from unet_diffusion import UNet
from unet_diffusion.cli import main
from unet_diffusion.errors import InputError


def denoiser(dims: int, **overrides) -> UNet:
    torch.manual_seed(0)
    fields = dict(dims=dims, sample_size=8, in_channels=2, channels=(8, 16), norm_groups=4, blocks_per_level=1,
                  attention_levels=(1,), attention_head_channels=8, weight_init="torch")
    return UNet(**{**fields, **overrides}).eval()


def valid_segmenter_3d() -> UNet:
    """A small valid-padding 3D U-Net: 20 -> 4 voxels a side, downsampling factor 2."""
    torch.manual_seed(0)
    return UNet(dims=3, sample_size=20, in_channels=1, out_channels=3, head="segment", block="classic", skips="level",
                conv_in=False, mid_block=False, channels=(4, 8), blocks_per_level=1, padding="valid", downsample="maxpool",
                upsample="conv_transpose", time_embedding=None, mid_attention=False).eval()


@pytest.mark.parametrize("dims, size, shape", [(1, 12, (12,)), (3, (4, 8, 6), (4, 8, 6))])
def test_denoise_pipeline_samples_signals_and_volumes(dims, size, shape):
    pipe = DenoisePipeline(unet=denoiser(dims), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    out = pipe(3, num_inference_steps=2, size=size, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (3, *shape, 2) and 0 <= out.min() and out.max() <= 1
    assert pipe(1, num_inference_steps=2, output_type="pt").images.shape == (1, 2, *(8,) * dims)  # the model's sample_size
    with pytest.raises(InputError, match="not pictures; use output_type='np'"):
        pipe(1, num_inference_steps=2)
    with pytest.raises(InputError, match=f"height and width are for images; this model has dims={dims}"):
        pipe(1, num_inference_steps=2, height=8, output_type="np")
    if dims == 3:
        with pytest.raises(InputError, match="size has 2 sides but the model has 3 spatial axes"):
            pipe(1, num_inference_steps=2, size=(8, 8), output_type="np")


def test_sample_command_writes_arrays_for_a_3d_denoiser(tmp_path):
    DenoisePipeline(unet=denoiser(3, in_channels=1), scheduler=DDIMScheduler()).save_pretrained(tmp_path / "model")
    code = main(["sample", str(tmp_path / "model"), "--num-images", "3", "--batch-size", "2", "--steps", "2",
                 "--size", "4", "8", "8", "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    arrays = [np.load(tmp_path / "out" / f"{i:05d}.npy") for i in range(3)]
    assert all(a.shape == (4, 8, 8) and a.dtype == np.float32 for a in arrays)
    assert not np.array_equal(arrays[0], arrays[1])  # one seed per sample


def test_3d_overlap_tiles_equal_one_forward_over_the_mirrored_volume():
    unet = valid_segmenter_3d()
    pipe = SegmentationPipeline(unet=unet)
    volume = torch.rand(1, 1, 9, 7, 10)
    tiled = pipe(volume, output_type="pt")  # 4-voxel output tiles: 3 x 2 x 3 of them
    margin = (20 - 4) // 2
    with torch.no_grad():
        padded = mirror_pad(volume, (margin,) * 3, (margin + 3, margin + 1, margin + 2))  # out to the 12 x 8 x 12 canvas
        whole = torch.softmax(unet(padded).sample[:, :, :9, :7, :10], dim=1)
    assert tiled.probabilities.shape == (1, 3, 9, 7, 10) and tiled.masks.shape == (1, 9, 7, 10)
    torch.testing.assert_close(tiled.probabilities, whole, atol=1e-5, rtol=0)


def test_3d_sliding_window_of_a_same_padding_model_equals_its_whole_volume_prediction_where_tiles_see_everything():
    """Blended windows are exact for a network whose output at a voxel depends on that voxel only."""
    volume = torch.rand(2, 1, 11, 9, 13)
    for blend in ("ramp", "gaussian", "uniform"):
        blended = sliding_window(lambda x: torch.cat([x * 2 + 1, -x], dim=1), volume, tile=(6, 4, 8), overlap=(2, 2, 3),
                                 tiles_per_batch=3, blend=blend)
        torch.testing.assert_close(blended, torch.cat([volume * 2 + 1, -volume], dim=1))
    torch.manual_seed(0)
    unet = UNet(dims=3, in_channels=1, out_channels=2, head="segment", channels=(4, 8), norm_groups=4, blocks_per_level=1,
                time_embedding=None, mid_attention=False, skips="level").eval()
    pipe = SegmentationPipeline(unet=unet)
    windows = pipe(volume[:1], tile_size=8, overlap=2, blend="gaussian", output_type="pt").probabilities
    whole = pipe(volume[:1], output_type="pt").probabilities
    assert windows.shape == whole.shape == (1, 2, 11, 9, 13)
    assert (windows - whole).abs().mean() < 0.05  # only the window edges differ (zero padding there)
    with pytest.raises(InputError, match="blend must be one of 'ramp', 'gaussian', 'uniform'"):
        pipe(volume[:1], tile_size=8, blend="cosine")


def test_1d_segmentation_takes_arrays_and_flips():
    torch.manual_seed(0)
    unet = UNet(dims=1, in_channels=1, out_channels=2, head="segment", channels=(4, 8), norm_groups=4, blocks_per_level=1,
                time_embedding=None, mid_attention=False).eval()
    pipe = SegmentationPipeline(unet=unet)
    signal = np.random.default_rng(0).random(30).astype(np.float32)
    out = pipe(signal, tta="flip")
    assert out.masks.shape == (1, 30) and out.probabilities.shape == (1, 2, 30)
    with pytest.raises(InputError, match="a 1D model can only be flipped"):
        pipe(signal, tta="d4")
    with pytest.raises(InputError, match=r"a 1D model takes arrays of shape \(L,\) or \(C, L\)"):
        pipe(np.zeros((2, 3, 4, 5), dtype=np.float32))


def test_segment_command_writes_a_volume_of_labels(tmp_path):
    SegmentationPipeline(unet=valid_segmenter_3d()).save_pretrained(tmp_path / "model")
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    np.save(volumes / "stack.npy", np.random.default_rng(0).random((9, 7, 10)).astype(np.float32))
    (volumes / "notes.txt").write_text("not an array")
    code = main(["segment", str(tmp_path / "model"), str(volumes), "--out", str(tmp_path / "out"), "--probabilities", "--quiet"])
    assert code == 0
    labels, probabilities = np.load(tmp_path / "out" / "stack.npy"), np.load(tmp_path / "out" / "stack_prob.npy")
    assert labels.shape == (9, 7, 10) and labels.dtype == np.uint8 and labels.max() < 3
    assert probabilities.shape == (3, 9, 7, 10)
    np.testing.assert_array_equal(labels, probabilities.argmax(0))
    assert main(["segment", str(tmp_path / "model"), str(volumes), "--out", str(tmp_path / "o2"), "--overlay"]) == 1
