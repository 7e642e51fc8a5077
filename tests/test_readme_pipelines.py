"""The sampling and segmentation examples of docs/pipelines.md run as written (with fewer steps)."""

import shlex

import numpy as np
import PIL.Image
from readme import code_blocks, commands

from unet_diffusion.cli import main

PAGE = "docs/pipelines.md"


def test_pipelines_page_sampling_and_segmentation_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (python,) = code_blocks("Sampling and segmentation", page=PAGE)
    namespace: dict = {}
    exec(python.replace("num_inference_steps=50", "num_inference_steps=2").replace("num_inference_steps=20", "num_inference_steps=2"), namespace)  # noqa: S102
    assert len(namespace["images"]) == 4 and namespace["images"][0].size == (32, 32)
    assert namespace["wide"].shape == (2, 32, 64, 3)
    assert namespace["out"].masks.shape == (1, 100, 150) and namespace["out"].probabilities.shape == (1, 2, 100, 150)
    filled, original = np.asarray(namespace["filled"]), np.asarray(namespace["images"][0])
    np.testing.assert_array_equal(filled[namespace["mask"] == 0], original[namespace["mask"] == 0])

    # The commands, on the models the Python example saved.
    (tmp_path / "images").mkdir()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 36), dtype=np.uint8)).save(tmp_path / "images" / "cell.png")
    for line in commands("Sampling and segmentation", page=PAGE):
        argv = shlex.split(line.replace("--steps 50", "--steps 2").replace("--steps 20", "--steps 2").replace("--num-images 16", "--num-images 2"))
        assert argv[0] == "unet-diffusion"
        assert main([*argv[1:], "--no-progress"]) == 0, line
    assert (tmp_path / "samples" / "grid.png").is_file() and len(list((tmp_path / "guided").glob("0*.png"))) == 4
    assert (tmp_path / "masks" / "cell.png").is_file() and (tmp_path / "masks" / "cell_overlay.png").is_file()


def test_pipelines_page_signals_and_volumes_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (python,) = code_blocks("Signals and volumes (1D and 3D)", page=PAGE)
    namespace: dict = {}
    exec(python.replace("num_inference_steps=10", "num_inference_steps=2"), namespace)  # noqa: S102
    assert namespace["waves"].shape == (2, 256, 1)
    out = namespace["out"]
    assert out.masks.shape == (1, 20, 64, 64) and out.probabilities.shape == (1, 2, 20, 64, 64)
