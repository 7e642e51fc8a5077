"""The `sample` and `segment` commands, on tiny models saved to temporary folders."""

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_config
from diffusers import DDIMScheduler

from pipelines import DenoisePipeline, SegmentationPipeline
from unet_diffusion import UNet, save_weights
from unet_diffusion.cli import main


def pixels(path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path))


@pytest.fixture(scope="module")
def denoiser_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("denoiser")
    DenoisePipeline(unet=UNet(**tiny_config()), scheduler=DDIMScheduler()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def segmenter_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("segmenter")
    unet = UNet(
        sample_size=60, in_channels=1, out_channels=3, head="segment", block="classic", skips="level",
        conv_in=False, mid_block=False, channels=(8, 16, 32), blocks_per_level=1, padding="valid",
        downsample="maxpool", upsample="conv_transpose", time_embedding=None, mid_attention=False,
    )
    SegmentationPipeline(unet=unet).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / "a.png")
    PIL.Image.fromarray(rng.integers(0, 255, (30, 30), dtype=np.uint8)).save(folder / "b.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_sample_from_a_pipeline_folder(denoiser_folder, tmp_path):
    args = ["sample", str(denoiser_folder), "--num-images", "3", "--steps", "3", "--sampler", "ddim", "--seed", "0", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a"), "--batch-size", "2"]) == 0
    written = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert written == ["00000.png", "00001.png", "00002.png", "grid.png"]
    assert pixels(tmp_path / "a" / "00000.png").shape == (16, 16, 3)
    assert pixels(tmp_path / "a" / "grid.png").shape == (32, 32, 3)  # 2 x 2 grid
    # Image i is seeded with seed + i, so the batch size does not change it (up to the rounding of a pixel: the
    # CPU's kernels may sum in another order for another batch size).
    assert main([*args, "--out", str(tmp_path / "b"), "--batch-size", "3"]) == 0
    a, b = (pixels(tmp_path / name / "00002.png").astype(int) for name in ("a", "b"))
    np.testing.assert_allclose(a, b, rtol=0, atol=1)


def test_sample_from_a_bare_unet_with_labels_and_guidance(tmp_path, capsys):
    unet = UNet(**tiny_config(num_class_labels=4))
    unet.save_pretrained(tmp_path / "unet")
    save_weights(unet, tmp_path / "unet.safetensors")
    for model in ("unet", "unet.safetensors"):
        out = tmp_path / f"out-{model}"
        code = main(["sample", str(tmp_path / model), "--num-images", "2", "--steps", "2", "--class-label", "1", "3",
                     "--guidance-scale", "2", "--height", "8", "--width", "24", "--out", str(out), "--no-progress"])
        assert code == 0
        assert pixels(out / "00001.png").shape == (8, 24, 3)
    assert "wrote 2 images and grid.png" in capsys.readouterr().out
    # A label the model cannot take: the network's rule, in one line that names the flag; no output folder.
    code = main(["sample", str(tmp_path / "unet"), "--class-label", "9", "--steps", "2", "--out", str(tmp_path / "bad"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and not (tmp_path / "bad").exists()
    assert "--class-label must lie in [0, 5)" in err and "class_labels" not in err


def test_sample_image_to_image_and_inpainting(denoiser_folder, tmp_path):
    image = np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[:8] = 255
    PIL.Image.fromarray(image).save(tmp_path / "init.png")
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    code = main(["sample", str(denoiser_folder), "--num-images", "1", "--steps", "4", "--image", str(tmp_path / "init.png"),
                 "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    np.testing.assert_array_equal(pixels(tmp_path / "out" / "00000.png")[8:], image[8:])


def test_segment_a_folder_with_overlays(segmenter_folder, photos, tmp_path):
    code = main(["segment", str(segmenter_folder), str(photos), "--out", str(tmp_path), "--overlay", "--tta", "flip", "--no-progress"])
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a_overlay.png", "b.png", "b_overlay.png"]
    mask = pixels(tmp_path / "a.png")
    assert mask.shape == (40, 50) and set(np.unique(mask)) <= {0, 128, 255}  # 3 classes spread over 0..255
    assert pixels(tmp_path / "a_overlay.png").shape == (40, 50, 3)


def test_segment_one_file_with_a_bare_unet_and_index_values(tmp_path, photos):
    UNet.from_preset("seg-small", channels=(8, 16), norm_groups=4).save_pretrained(tmp_path / "unet")
    code = main(["segment", str(tmp_path / "unet"), str(photos / "b.jpg"), "--out", str(tmp_path / "out"), "--mask-values", "index"])
    assert code == 0
    assert set(np.unique(pixels(tmp_path / "out" / "b.png"))) <= {0, 1}


def test_command_errors_name_the_problem(denoiser_folder, segmenter_folder, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert main(["segment", str(segmenter_folder), str(broken), "--out", str(tmp_path / "o")]) == 1
    assert f"cannot read {broken}" in capsys.readouterr().err
    assert main(["sample", str(segmenter_folder), "--out", str(tmp_path / "o")]) == 1
    assert "holds a SegmentationPipeline, which does not sample; use `unet-diffusion segment`" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "missing"), str(broken), "--out", str(tmp_path / "o")]) == 1
    assert "no model at" in capsys.readouterr().err
    assert main(["sample", str(denoiser_folder), "--class-label", "1", "--out", str(tmp_path / "o")]) == 1
    assert "not class-conditional" in capsys.readouterr().err



def test_segment_says_so_when_a_mask_is_one_class(tmp_path, photos, capsys):
    unet = UNet.from_preset("seg-small", channels=(8, 16), norm_groups=4)
    with torch.no_grad():  # a network that answers class 1 everywhere
        unet.out.conv.weight.zero_()
        unet.out.conv.bias.copy_(torch.tensor([0.0, 5.0]))
    unet.save_pretrained(tmp_path / "unet")
    assert main(["segment", str(tmp_path / "unet"), str(photos / "b.jpg"), "--out", str(tmp_path / "out")]) == 0
    assert "every pixel of b.jpg is class 1" in capsys.readouterr().err
    assert set(np.unique(pixels(tmp_path / "out" / "b.png"))) == {255}


@pytest.fixture(scope="module")
def two_class_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-class")
    unet = UNet.from_preset("seg-small", channels=(8, 16), norm_groups=4, weight_init="torch")  # random head: varied probabilities
    SegmentationPipeline(unet=unet, image_mean=0.5, image_std=0.5).save_pretrained(folder)
    return folder


def test_segment_writes_probabilities_that_round_trip(two_class_folder, photos, tmp_path):
    assert main(["segment", str(two_class_folder), str(photos), "--out", str(tmp_path), "--probabilities", "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a_prob.png", "b.png", "b_prob.png"]
    pipe = SegmentationPipeline.from_pretrained(two_class_folder)
    for name, file in (("a", photos / "a.png"), ("b", photos / "b.jpg")):
        written = PIL.Image.open(tmp_path / f"{name}_prob.png")
        assert written.mode.startswith("I")  # 16-bit grayscale
        expected = pipe(PIL.Image.open(file)).probabilities[0, 1]
        np.testing.assert_allclose(np.asarray(written) / 65535, expected, atol=1 / 65535, rtol=0)
        assert np.ptp(expected) > 0.01  # a real map, not a constant


def test_segment_threshold(two_class_folder, photos, tmp_path):
    file = str(photos / "a.png")
    for out, extra in (("plain", []), ("half", ["--threshold", "0.5"]), ("high", ["--threshold", "0.6"])):
        assert main(["segment", str(two_class_folder), file, "--out", str(tmp_path / out), *extra]) == 0
    plain, half, high = (pixels(tmp_path / out / "a.png") for out in ("plain", "half", "high"))
    np.testing.assert_array_equal(half, plain)
    assert (high == 255).sum() < (plain == 255).sum()
    probability = SegmentationPipeline.from_pretrained(two_class_folder)(PIL.Image.open(file)).probabilities[0, 1]
    np.testing.assert_array_equal(high == 255, probability >= 0.6)


def test_segment_probabilities_of_more_classes_and_threshold_errors(segmenter_folder, two_class_folder, photos, tmp_path, capsys):
    file = photos / "a.png"
    assert main(["segment", str(segmenter_folder), str(file), "--out", str(tmp_path / "k3"), "--probabilities"]) == 0
    saved = np.load(tmp_path / "k3" / "a_prob.npy")
    expected = SegmentationPipeline.from_pretrained(segmenter_folder)(PIL.Image.open(file)).probabilities[0]
    assert saved.dtype == np.float32 and saved.shape == (3, 40, 50)
    np.testing.assert_allclose(saved, expected, atol=1e-6)
    assert main(["segment", str(segmenter_folder), str(file), "--out", str(tmp_path / "e"), "--threshold", "0.5"]) == 1
    assert "threshold works on two-class models" in capsys.readouterr().err
    assert main(["segment", str(two_class_folder), str(file), "--out", str(tmp_path / "e"), "--threshold", "1.5"]) == 1
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error" in line]  # one line (the rest is the loading bar)
    assert line == "unet-diffusion segment: error: --threshold must be a number strictly between 0 and 1; got 1.5."
