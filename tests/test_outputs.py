"""Output folders: new or empty, or replaced whole with --overwrite; never a mix of two runs, never a name written
twice, no debris of killed runs, no "wrote 0", and files with the modes the umask gives."""

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_config
from diffusers import DDIMScheduler
from safetensors.torch import save_file

from pipelines import DenoisePipeline
from unet_diffusion import UNet, save_weights
from unet_diffusion.cli import main
from unet_diffusion.errors import InputError
from unet_diffusion.outputs import staged_output

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def denoiser(tmp_path_factory):
    folder = tmp_path_factory.mktemp("denoiser")
    DenoisePipeline(unet=UNet(**tiny_config()), scheduler=DDIMScheduler()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("segmenter") / "unet"
    UNet.from_preset("seg-small", channels=(8, 16), norm_groups=4).save_pretrained(folder)
    return folder


def sample(model, out, *extra) -> int:
    return main(["sample", str(model), "--out", str(out), "--num-images", "2", "--steps", "1", "--quiet", *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ---------------------------------------------------------------------------- never a mix of two runs
def test_sample_into_a_folder_with_earlier_files_is_refused_and_overwrite_replaces_them_all(denoiser, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("00002.png", "00003.png", "notes.txt"):  # an earlier run of four images, and a note
        (out / name).write_text("earlier")
    assert sample(denoiser, out) == 1
    assert "--overwrite" in one_line_error(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["00002.png", "00003.png", "notes.txt"]  # untouched

    assert sample(denoiser, out, "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "grid.png"]  # nothing earlier stays
    assert not list(tmp_path.glob(".out.*"))  # no staging folder left


def test_an_empty_folder_is_written_into(denoiser, tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    assert sample(denoiser, tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000.png", "00001.png", "grid.png"]
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with staged_output(".") as staging:  # the working folder, empty
        (staging / "a.txt").write_text("new")
    assert sorted(p.name for p in (tmp_path / "here").iterdir()) == ["a.txt"]


def test_overwrite_never_removes_subfolders_inputs_or_the_working_folder(tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / "keep").mkdir(parents=True)
    with pytest.raises(InputError, match="keep"), staged_output(out, overwrite=True) as staging:
        (staging / "a.txt").write_text("new")
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(InputError), staged_output(".", overwrite=True) as staging:
        (staging / "a.txt").write_text("new")
    assert (tmp_path / "here" / "notes.txt").read_text() == "mine"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a.png").write_text("an input")
    with pytest.raises(InputError), staged_output(inputs, overwrite=True, reads=[inputs / "a.png"]) as staging:
        (staging / "a.txt").write_text("new")
    assert (out / "keep").is_dir() and (inputs / "a.png").read_text() == "an input"


def test_a_run_that_writes_nothing_leaves_no_folder(tmp_path):
    with pytest.raises(InputError), staged_output(tmp_path / "out"):
        pass
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- segment's names and inputs
def test_segment_refuses_two_inputs_that_would_write_one_mask(segmenter, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("img.png", "img.jpg"):
        PIL.Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(photos / name)
    assert main(["segment", str(segmenter), str(photos), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = one_line_error(capsys)
    assert "img.jpg" in err and "img.png" in err
    assert not (tmp_path / "out").exists()


def test_segment_overlay_name_collision_is_refused(segmenter, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "a_overlay.png"):
        PIL.Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(photos / name)
    args = ["segment", str(segmenter), str(photos), "--quiet"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0  # without --overlay the names differ
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "drawn"), "--overlay"]) == 1
    assert "a_overlay" in one_line_error(capsys) and not (tmp_path / "drawn").exists()


def test_an_array_given_to_an_image_model_is_an_error_not_wrote_zero(segmenter, tmp_path, capsys):
    np.save(tmp_path / "volume.npy", np.zeros((8, 16, 16), dtype=np.float32))
    assert main(["segment", str(segmenter), str(tmp_path / "volume.npy"), "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "wrote" not in captured.out and len(captured.err.strip().splitlines()) == 1
    assert ".npy" in captured.err
    assert not (tmp_path / "out").exists()


def test_no_readable_input_is_an_error_and_writes_no_folder(segmenter, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert main(["segment", str(segmenter), str(tmp_path / "broken.png"), "--out", str(tmp_path / "out")]) == 1
    assert "wrote" not in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- debris of killed runs
WRITER = textwrap.dedent("""
    import os, signal, sys, time
    from unet_diffusion.outputs import staged_output
    with staged_output(sys.argv[1]) as staging:
        (staging / "00000.png").write_text("half a result")
        if sys.argv[2] == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        print("writing", flush=True)
        time.sleep(60)
""")


def start_writer(out: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(out), mode], env=env, stdout=subprocess.PIPE, text=True)


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run_and_a_live_ones_is_not(tmp_path):
    out = tmp_path / "masks"
    killed = start_writer(out, "die")
    assert killed.wait(timeout=60) == -signal.SIGKILL
    (debris,) = tmp_path.glob(".masks.partial-*")
    live = start_writer(out, "live")
    try:
        assert live.stdout.readline().strip() == "writing"
        (working,) = set(tmp_path.glob(".masks.partial-*")) - {debris}
        with staged_output(out) as staging:
            (staging / "00000.png").write_text("whole")
        assert not debris.exists()  # the killed run's
        assert working.is_dir()  # the running one's is its own
        assert (out / "00000.png").read_text() == "whole"
    finally:
        live.kill()
        live.wait()


# ---------------------------------------------------------------------------- a folder that cannot be written
def test_an_unwritable_output_folder_is_one_line(denoiser, tmp_path, capsys, monkeypatch):
    read_only = tmp_path / "read-only"
    read_only.mkdir()

    def refuse(path, *args, **kwargs):
        if Path(path).parent == read_only or Path(path) == read_only:
            raise PermissionError(13, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    real_mkdir = os.mkdir
    monkeypatch.setattr(os, "mkdir", refuse)  # a read-only folder even for root
    assert sample(denoiser, read_only / "out") == 1  # on main: a PermissionError traceback
    assert str(read_only) in one_line_error(capsys)
    assert list(read_only.iterdir()) == []


# ---------------------------------------------------------------------------- modes as the umask says
@pytest.fixture(params=[0o022, 0o077], ids=["umask-022", "umask-077"])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def modes(folder: Path) -> set[tuple[str, int]]:
    """(kind, permission bits) of the folder and everything in it."""
    paths = [folder, *folder.rglob("*")]
    return {("dir" if p.is_dir() else "file", stat.S_IMODE(p.stat().st_mode)) for p in paths}


def test_staged_output_and_weights_files_follow_the_umask(umask, tmp_path):
    file_mode, folder_mode = 0o666 & ~umask, 0o777 & ~umask
    with staged_output(tmp_path / "out") as staging:
        save_file({"x": torch.zeros(2)}, staging / "x.safetensors")  # safetensors alone: 0600
        (staging / "note.txt").write_text("x")
    assert modes(tmp_path / "out") == {("dir", folder_mode), ("file", file_mode)}
    save_weights(UNet(**tiny_config()), tmp_path / "model.safetensors")
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == file_mode


def test_convert_writes_files_as_the_umask_says(umask, tmp_path):
    UNet(**tiny_config()).save_pretrained(tmp_path / "ours")
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "theirs")]) == 0
    assert modes(tmp_path / "theirs") == {("dir", 0o777 & ~umask), ("file", 0o666 & ~umask)}


def test_convert_overwrite_replaces_the_folder_not_merges(tmp_path):
    UNet(**tiny_config()).save_pretrained(tmp_path / "ours")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "diffusion_pytorch_model.fp16.safetensors").write_text("an earlier variant")
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "theirs"), "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "theirs").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
