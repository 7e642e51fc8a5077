"""The README's examples run as written (with fewer steps), and its commands are the real ones."""

import shlex

import numpy as np
import PIL.Image
import pytest
from readme import code_blocks, commands, subcommand_lines

from unet_diffusion.cli import build_parser, command_entry_points, main


def fewer_steps(code: str) -> str:
    for steps in (50, 20):
        code = code.replace(f"num_inference_steps={steps}", "num_inference_steps=2").replace(f"--steps {steps}", "--steps 2")
    return code


def test_readme_quick_start_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, pipeline = code_blocks("Quick start in Python")
    namespace: dict = {}
    exec(model, namespace)  # noqa: S102 - our own README
    assert namespace["noise_pred"].shape == (4, 3, 32, 32)
    assert namespace["logits"].shape == (1, 2, 388, 388)
    assert namespace["out"].shape == (4, 3, 32, 32)
    assert (tmp_path / "tiny-model" / "config.json").is_file() and (tmp_path / "tiny.safetensors").is_file()
    exec(fewer_steps(pipeline), namespace)  # noqa: S102
    assert len(namespace["images"]) == 4


def test_readme_sample_and_segment_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    (sample,) = code_blocks("Sample")
    exec(fewer_steps(sample), namespace)  # noqa: S102
    assert len(namespace["images"]) == 4 and namespace["images"][0].size == (32, 32)
    (segment,) = code_blocks("Segment")
    exec(segment, namespace)  # noqa: S102 - uses the names the Sample block imported
    assert namespace["out"].masks.shape == (1, 100, 150) and namespace["out"].probabilities.shape == (1, 2, 100, 150)

    (tmp_path / "images").mkdir()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 36), dtype=np.uint8)).save(tmp_path / "images" / "cell.png")
    for line in commands("Sample") + commands("Segment"):
        argv = shlex.split(fewer_steps(line).replace("--num-images 16", "--num-images 2"))
        assert argv[0] == "unet-diffusion"
        assert main([*argv[1:], "--quiet"]) == 0, line
    assert (tmp_path / "samples" / "grid.png").is_file() and len(list((tmp_path / "guided").glob("0*.png"))) == 4
    assert (tmp_path / "masks" / "cell_overlay.png").is_file() and (tmp_path / "cells" / "cell_instances.png").is_file()


def test_readme_command_line_quick_start_parses():
    parser = build_parser()
    lines = commands("Quick start on the command line")
    names = set()
    for line in lines:
        argv = shlex.split(line, comments=True)
        assert argv[0] == "unet-diffusion", line
        if argv[1:] == ["--help"]:
            continue
        names.add(parser.parse_args(argv[1:]).command)
    assert {"train", "sample", "segment", "evaluate", "convert"} <= names


def test_help_lists_every_installed_subcommand_as_a_subcommand_line():
    listed = subcommand_lines(build_parser().format_help())
    assert sorted(listed) == sorted(command_entry_points()), listed


def test_readme_diffusers_loading_runs(tmp_path, monkeypatch, request):
    """'Load a diffusers checkpoint', on a tiny diffusers folder standing in for the download."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    monkeypatch.chdir(tmp_path)
    request.addfinalizer(lambda threads=torch.get_num_threads(): torch.set_num_threads(threads))
    torch.set_num_threads(1)  # tiny models on a shared 2-core machine: avoid OpenMP oversubscription
    UNet2DModel(
        sample_size=16, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, attention_head_dim=None,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6,
    ).save_pretrained("ddpm-cifar10-32")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained("ddpm-cifar10-32")

    download, converts = code_blocks("Load a diffusers checkpoint", "bash")
    assert shlex.split(download)[:3] == ["hf", "download", "google/ddpm-cifar10-32"]
    (python,) = code_blocks("Load a diffusers checkpoint")
    namespace: dict = {}
    exec(fewer_steps(python), namespace)  # noqa: S102 - our own README
    assert len(namespace["images"]) == 4 and namespace["images"][0].size == (16, 16)
    assert (tmp_path / "ddpm-cifar10-32-roundtrip" / "config.json").is_file()
    for line in converts.splitlines():
        argv = shlex.split(line, comments=True)
        assert argv[0] == "unet-diffusion"
        assert main(argv[1:]) == 0, line
    assert (tmp_path / "ddpm-cifar10-32-back" / "diffusion_pytorch_model.safetensors").is_file()


PYTHON_SECTIONS = {  # every page with Python examples, and the sections whose examples the tests run
    "README.md": ["Quick start in Python", "Sample", "Segment", "Load a diffusers checkpoint"],
    "docs/pipelines.md": ["Sampling and segmentation", "Signals and volumes (1D and 3D)"],
    "docs/training.md": ["The config"],
}


def test_every_python_example_sits_in_a_section_the_tests_run():
    """An example outside the sections these tests run would go stale unseen."""
    from readme import FENCE, ROOT

    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        page = path.relative_to(ROOT).as_posix()
        found = sum(lang == "python" for lang, _ in FENCE.findall(path.read_text()))
        tested = sum(len(code_blocks(heading, page=page)) for heading in PYTHON_SECTIONS.get(page, []))
        assert found == tested, f"{page}: {found} Python examples, {tested} of them in tested sections"


def test_ci_runs_the_readmes_install_and_test_command():
    """CI is what the README tells a user to do: the same install and test command, in a fresh environment."""
    from readme import ROOT

    (command,) = commands("Install and test")
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert ci[-1] == command
    assert any(line.startswith("python3 -m venv") for line in ci)
