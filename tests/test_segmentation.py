"""Segmentation inference: overlap-tile equals one whole-image forward, sliding windows, TTA, inputs."""

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_config

from pipelines import SegmentationPipeline
from pipelines.tiling import mirror_pad, overlap_tile_grid, sliding_window
from unet_diffusion import UNet


def valid_unet(**overrides):
    """A small valid-padding U-Net like the 2015 one: 60 -> 20 pixels, downsampling factor 4."""
    config = dict(
        sample_size=60, in_channels=1, out_channels=3, head="segment", block="classic", skips="level",
        conv_in=False, mid_block=False, channels=(8, 16, 32), blocks_per_level=1, padding="valid",
        downsample="maxpool", upsample="conv_transpose", time_embedding=None, mid_attention=False,
    )
    return UNet(**{**config, **overrides}).eval()


def same_unet(**overrides):
    config = tiny_config(head="segment", out_channels=3, in_channels=1, time_embedding=None, attention_levels=(), mid_attention=False)
    return UNet(**{**config, **overrides}).eval()


def softmax(logits):
    return torch.softmax(logits, dim=1).numpy()


# ---------------------------------------------------------------------------- valid padding: overlap-tile
def test_overlap_tile_equals_one_forward_over_the_mirrored_image():
    unet = valid_unet()
    pipe = SegmentationPipeline(unet=unet)
    image = torch.rand(2, 1, 50, 70)
    tiled = pipe(image, tile_size=60, output_type="pt")  # 20-pixel output tiles: a 3 x 4 grid
    positions, canvas = overlap_tile_grid((50, 70), (60, 60), (20, 20), stride_multiple=4)
    assert len(positions) == 12 and canvas == (60, 80)
    # The same pixels from one forward: mirror by the 20-pixel margin (and out to the canvas).
    with torch.no_grad():
        whole = unet(mirror_pad(image, (20, 20), (20 + 10, 20 + 10))).sample[:, :, :50, :70]
    assert tiled.probabilities.shape == (2, 3, 50, 70) and tiled.masks.shape == (2, 50, 70)
    np.testing.assert_allclose(tiled.probabilities.numpy(), softmax(whole), atol=1e-5)
    assert torch.equal(tiled.masks, tiled.probabilities.argmax(1))
    one_tile = pipe(image, tile_size=(100, 120), tiles_per_batch=1, output_type="pt")
    np.testing.assert_allclose(one_tile.probabilities.numpy(), tiled.probabilities.numpy(), atol=1e-5)


def test_training_validation_sees_the_pipelines_whole_image_logits():
    """train.segmentation.predict_logits is the pipeline's tiling (one tile over the whole mirrored image)."""
    from train.segmentation import predict_logits

    unet = valid_unet()
    image = torch.rand(2, 1, 50, 70)
    with torch.no_grad():
        logits = predict_logits(unet, image)
    tiled = SegmentationPipeline(unet=unet)(image, tile_size=60, output_type="pt")
    assert logits.shape == (2, 3, 50, 70)
    np.testing.assert_allclose(softmax(logits), tiled.probabilities.numpy(), atol=1e-5)


def test_images_smaller_than_an_output_tile():
    out = SegmentationPipeline(unet=valid_unet())(np.random.rand(7, 3).astype(np.float32))
    assert out.masks.shape == (1, 7, 3) and np.allclose(out.probabilities.sum(1), 1, atol=1e-5)


def test_ronneberger2015_tile_grid_on_512(monkeypatch):
    unet = UNet.from_preset("ronneberger2015").eval()
    pipe = SegmentationPipeline(unet=unet)
    # The paper's grid: 572-pixel input tiles, 388-pixel output tiles, a 92-pixel mirrored border.
    positions, canvas = overlap_tile_grid((512, 512), (572, 572), (388, 388), stride_multiple=16)
    assert positions == [(0, 0), (0, 384), (384, 0), (384, 384)] and canvas == (772, 772)
    image = np.random.default_rng(0).random((512, 512), dtype=np.float32)
    # Geometry, at no cost: a stand-in network that returns its input's centre hands back the image.
    calls = []

    def centre(x):
        calls.append(tuple(x.shape))
        return torch.cat([-x, x], dim=1)[:, :, 92:-92, 92:-92] * 50

    monkeypatch.setattr(pipe, "_predict", centre)
    out = pipe(image, output_type="pt")  # tile_size defaults to sample_size, 572
    assert calls == [(4, 1, 572, 572)]
    assert out.masks.shape == (1, 512, 512)
    np.testing.assert_allclose(out.probabilities[0, 1].numpy(), 1 / (1 + np.exp(-100 * image)), atol=1e-5)
    monkeypatch.undo()
    # The real network, on one 700-pixel tile (516-pixel output) to keep the test fast.
    out = pipe(image, tile_size=700)
    assert out.masks.shape == (1, 512, 512) and out.probabilities.shape == (1, 2, 512, 512)


# ---------------------------------------------------------------------------- same padding
def test_same_padding_whole_image_equals_the_forward():
    unet = same_unet()
    pipe = SegmentationPipeline(unet=unet)
    image = torch.rand(2, 1, 16, 24)
    with torch.no_grad():
        expected = softmax(unet(image).sample)
    np.testing.assert_allclose(pipe(image).probabilities, expected, atol=1e-6)
    np.testing.assert_allclose(pipe(image, tile_size=32).probabilities, expected, atol=1e-6)  # fits one tile
    odd = pipe(torch.rand(1, 1, 13, 30))  # mirrored up to a size the model takes, cropped back
    assert odd.probabilities.shape == (1, 3, 13, 30)


def test_sliding_window_blends_to_the_exact_result_for_a_pointwise_network():
    image = torch.rand(2, 3, 37, 50)
    out = sliding_window(lambda x: x * 2 + 1, image, tile=(16, 16), overlap=(6, 4), tiles_per_batch=3)
    torch.testing.assert_close(out, image * 2 + 1)


def test_same_padding_sliding_window_on_a_large_image():
    pipe = SegmentationPipeline(unet=same_unet())
    image = torch.rand(1, 1, 40, 56)
    whole = pipe(image).probabilities
    tiled = pipe(image, tile_size=16, overlap=8).probabilities
    assert tiled.shape == (1, 3, 40, 56)
    np.testing.assert_allclose(tiled.sum(1), 1, atol=1e-5)
    assert np.abs(tiled - whole).mean() < 0.1  # blended tiles: close to, not equal to, one pass
    with pytest.raises(ValueError, match="multiple of 2"):
        pipe(image, tile_size=15)


# ---------------------------------------------------------------------------- test-time augmentation
@pytest.mark.parametrize("tta, calls_expected", [("flip", 4), ("d4", 8)])
def test_tta_averages_over_flips_and_rotations(tta, calls_expected):
    unet = same_unet()
    pipe = SegmentationPipeline(unet=unet)
    calls = []
    unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    image = torch.rand(1, 1, 16, 16)
    averaged = pipe(image, tta=tta, output_type="pt").probabilities
    assert len(calls) == calls_expected
    plain = pipe(image, output_type="pt").probabilities
    assert (averaged - plain).abs().max() > 1e-4
    # Averaged over the group, the prediction follows the image's flips (and rotations, for d4).
    flipped = pipe(image.flip(-1), tta=tta, output_type="pt").probabilities
    torch.testing.assert_close(flipped, averaged.flip(-1), atol=1e-5, rtol=0)
    if tta == "d4":
        turned = pipe(torch.rot90(image, 1, (-2, -1)), tta=tta, output_type="pt").probabilities
        torch.testing.assert_close(turned, torch.rot90(averaged, 1, (-2, -1)), atol=1e-5, rtol=0)


def test_tta_on_a_valid_padding_model():
    pipe = SegmentationPipeline(unet=valid_unet())
    out = pipe(torch.rand(1, 1, 30, 22), tta=True)
    assert out.probabilities.shape == (1, 3, 30, 22)


# ---------------------------------------------------------------------------- inputs, outputs, errors
def test_inputs_of_every_kind():
    pipe = SegmentationPipeline(unet=same_unet())
    rgb = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 28, 3), dtype=np.uint8))
    gray = np.array(rgb.convert("L"))
    from_pil = pipe(rgb).probabilities
    np.testing.assert_allclose(from_pil, pipe(gray).probabilities, atol=1e-6)
    np.testing.assert_allclose(from_pil, pipe(torch.from_numpy(gray)[None].float() / 255).probabilities, atol=1e-6)
    mixed = pipe([rgb, np.zeros((8, 8), np.float32)])
    assert [m.shape for m in mixed.masks] == [(20, 28), (8, 8)]
    assert [p.shape for p in mixed.probabilities] == [(3, 20, 28), (3, 8, 8)]
    with pytest.raises(ValueError, match="expected 1-channel images; got 3"):
        pipe(np.zeros((8, 8, 3), np.float32))


def test_one_logit_models_and_normalisation_round_trip(tmp_path):
    unet = same_unet(out_channels=1)
    pipe = SegmentationPipeline(unet=unet, image_mean=0.5, image_std=0.25)
    image = torch.rand(1, 1, 16, 16)
    out = pipe(image, output_type="pt")
    with torch.no_grad():
        p = torch.sigmoid(unet((image - 0.5) / 0.25).sample)
    torch.testing.assert_close(out.probabilities, torch.cat([1 - p, p], dim=1))
    pipe.save_pretrained(tmp_path)
    loaded = SegmentationPipeline.from_pretrained(tmp_path)
    assert loaded.config.image_mean == 0.5 and loaded.config.image_std == 0.25
    torch.testing.assert_close(loaded(image, output_type="pt").probabilities, out.probabilities)


def test_batch_norm_model_in_training_segments_in_eval_mode():
    unet = valid_unet(batch_norm=True)
    pipe = SegmentationPipeline(unet=unet)
    image = torch.rand(1, 1, 24, 24)
    expected = pipe(image).probabilities
    unet.train()
    np.testing.assert_array_equal(pipe(image).probabilities, expected)  # running statistics, not the batch's
    assert unet.training


def test_segmentation_errors():
    with pytest.raises(ValueError, match="head='segment'.*DenoisePipeline"):
        SegmentationPipeline(unet=UNet(**tiny_config()))
    with pytest.raises(ValueError, match="conditioned through time_embedding"):
        SegmentationPipeline(unet=UNet(**tiny_config(head="segment")))
    pipe = SegmentationPipeline(unet=valid_unet())
    with pytest.raises(ValueError, match=r"tile_size \(50, 50\).*nearest valid sizes: \[44, 48, 52, 56\]"):
        pipe(torch.rand(1, 1, 30, 30), tile_size=50)
    with pytest.raises(ValueError, match="tta must be"):
        pipe(torch.rand(1, 1, 30, 30), tta="rotate")
    with pytest.raises(TypeError, match="expected a PIL image"):
        pipe("image.png")


# ---------------------------------------------------------------------------- threshold
def test_threshold_half_is_the_argmax_and_higher_marks_fewer_pixels():
    pipe = SegmentationPipeline(unet=same_unet(out_channels=2))
    image = torch.rand(2, 1, 16, 24)
    plain = pipe(image)
    half = pipe(image, threshold=0.5)
    np.testing.assert_array_equal(half.masks, plain.masks)
    np.testing.assert_array_equal(half.probabilities, plain.probabilities)  # the threshold changes masks only
    p1 = plain.probabilities[:, 1]
    high = np.median(p1[p1 >= 0.5])  # leaves about half of the argmax's class-1 pixels
    strict = pipe(image, threshold=float(high)).masks
    np.testing.assert_array_equal(strict, (p1 >= high).astype(np.int64))
    assert 0 < strict.sum() < half.masks.sum()
    one_logit = SegmentationPipeline(unet=same_unet(out_channels=1))  # [1 - p, p]: two classes too
    out = one_logit(image, threshold=0.3)
    np.testing.assert_array_equal(out.masks, (out.probabilities[:, 1] >= 0.3).astype(np.int64))


def test_threshold_errors():
    three = SegmentationPipeline(unet=same_unet())  # 3 classes
    with pytest.raises(ValueError, match="two-class models.*this one has 3 classes"):
        three(torch.rand(1, 1, 16, 16), threshold=0.5)
    two = SegmentationPipeline(unet=same_unet(out_channels=2))
    for bad in (0, 1, 1.5, -0.2, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            two(torch.rand(1, 1, 16, 16), threshold=bad)
