"""A newcomer's first hour: the command line starts fast, finds the shipped configs, and every
ordinary mistake ends in one line that says what to do."""

import json
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_config
from diffusers import DDIMScheduler, DDPMScheduler
from trainkit import ROOT, TINY_DIFFUSION, merged, write_config

from pipelines import DenoisePipeline, SegmentationPipeline
from train import load_config
from train.config import ConfigError, find_config, shipped_config_names
from unet_diffusion import InputError, UNet, load_weights, save_weights
from unet_diffusion.cli import build_parser, main


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


# ---------------------------------------------------------------------------- start-up and imports
def test_help_lists_every_command_without_importing_torch():
    out = run_python(
        "import sys, contextlib, io\n"
        "from unet_diffusion.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as text:\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        "print(text.getvalue()); print('HEAVY', sorted(m for m in ('torch', 'diffusers', 'accelerate') if m in sys.modules))"
    )
    from readme import subcommand_lines

    from unet_diffusion.cli import command_entry_points

    assert sorted(subcommand_lines(out)) == sorted(command_entry_points())
    assert "HEAVY []" in out


def test_sample_imports_neither_accelerate_nor_the_training_package(tmp_path):
    DenoisePipeline(unet=UNet(**tiny_config()), scheduler=DDIMScheduler()).save_pretrained(tmp_path / "pipe")
    out = run_python(
        "import sys\n"
        "from unet_diffusion.cli import main\n"
        f"code = main(['sample', {str(tmp_path / 'pipe')!r}, '--out', {str(tmp_path / 'out')!r}, '--num-images', '1',"
        " '--steps', '2', '--quiet'])\n"
        "print('CODE', code, sorted({m.split('.')[0] for m in sys.modules} & {'train', 'accelerate'}))"
    )
    # diffusers' ModelMixin imports accelerate by itself when it is installed; then only `train` is ours to keep out.
    accelerate_via_diffusers = "True" in run_python("import sys, diffusers.models.modeling_utils; print('accelerate' in sys.modules)")
    assert ("CODE 0 ['accelerate']" if accelerate_via_diffusers else "CODE 0 []") in out


MISTAKES = {  # a command line with a mistake, and the start of the one line that reports it
    "sample": (["sample", "MODEL", "--out", "OUT", "--num-images", "0"], "--num-images must be at least 1"),
    "sample size": (["sample", "MODEL", "--out", "OUT", "--height", "0"], "--height must be a positive number"),
    "segment": (["segment", "MODEL", "MISSING", "--out", "OUT"], "no image, array or folder at"),
    "segment flag": (["segment", "MODEL", ".", "--out", "OUT", "--threshold", "1.5"], "--threshold must be a number strictly between"),
    "evaluate": (["evaluate", ".", "MISSING"], "no folder of reference images"),
    "convert": (["convert", "MISSING", "OUT"], "no model at"),
    "train": (["train", "--config", "mnist", "optim.lrr=1"], "unknown key optim.lrr"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_cli_mistake_is_reported_before_torch_or_diffusers_load(mistake, tmp_path):
    """What makes a mistake slow to report is loading torch, diffusers and the model first: none of them may load."""
    argv, message = MISTAKES[mistake]
    argv = [word.replace("MODEL", str(tmp_path / "model")).replace("MISSING", str(tmp_path / "missing"))
                .replace("OUT", str(tmp_path / "out")) for word in argv]
    code = (f"import sys; from unet_diffusion.cli import main; code = main({argv!r}); "
            "print(code, sorted(m for m in ('torch', 'diffusers', 'accelerate') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.strip() == "1 []", (done.stdout, done.stderr)
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


# ---------------------------------------------------------------------------- configs by name
def test_shipped_configs_by_name_and_by_path_from_any_folder(tmp_path, monkeypatch):
    assert {"quickstart", "mnist", "isbi2012"} <= set(shipped_config_names())
    monkeypatch.chdir(tmp_path)  # not the clone: configs/... does not exist here
    assert find_config("mnist").name == "mnist.yaml"
    assert find_config("configs/isbi2012.yaml").name == "isbi2012.yaml"
    assert load_config("quickstart").task == "diffusion"
    with pytest.raises(FileNotFoundError, match="shipped config .*quickstart"):
        find_config("mnsit")


def test_demo_accepts_resume():
    args = build_parser().parse_args(["demo", "--output", "x", "--resume", "latest", "--quiet"])
    assert (args.resume, args.quiet) == ("latest", True)


# ---------------------------------------------------------------------------- errors name flags, not bugs
def test_cli_errors_name_flags_and_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch):
    DenoisePipeline(unet=UNet(**tiny_config()), scheduler=DDIMScheduler()).save_pretrained(tmp_path / "pipe")
    code = main(["sample", str(tmp_path / "pipe"), "--out", str(tmp_path / "out"), "--steps", "0", "--quiet"])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert "--steps" in err and "num_inference_steps" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # a failed command leaves no output folder

    import pipelines.commands

    def bug(args):
        raise TypeError("a bug")

    monkeypatch.setattr(pipelines.commands, "run_sample", bug)
    monkeypatch.setattr(pipelines.commands, "add_sample", _add_sample_with(bug, pipelines.commands.add_sample))
    with pytest.raises(TypeError, match="a bug"):
        main(["sample", str(tmp_path / "pipe"), "--out", str(tmp_path / "out")])


def _add_sample_with(handler, add):
    def add_sample(subparsers):
        add(subparsers)
        subparsers.choices["sample"].set_defaults(func=handler)
    return add_sample


def test_missing_local_model_fails_at_once(tmp_path, capsys, monkeypatch):
    """At once: a local-looking path that does not exist is not tried on the Hub."""
    import huggingface_hub

    def no_download(*args, **kwargs):
        raise AssertionError("a missing local path was looked up on the Hub")

    for name in ("snapshot_download", "hf_hub_download"):
        monkeypatch.setattr(huggingface_hub, name, no_download)
    for model in (str(tmp_path / "nope"), "./nope", "runs-that-do-not-exist/a/b"):
        assert main(["sample", model, "--out", str(tmp_path / "out")]) == 1
        assert "no model at" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        UNet.from_pretrained(str(tmp_path / "missing"))


def test_device_cuda_without_a_gpu_says_so(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    DenoisePipeline(unet=UNet(**tiny_config()), scheduler=DDIMScheduler()).save_pretrained(tmp_path / "pipe")
    assert main(["sample", str(tmp_path / "pipe"), "--out", str(tmp_path / "out"), "--device", "cuda"]) == 1
    assert "sees no CUDA GPU; use --device cpu" in capsys.readouterr().err


# ---------------------------------------------------------------------------- weights and what travels with them
def test_weights_file_carries_its_training_schedule(tmp_path):
    unet = UNet(**tiny_config())
    trained_with = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    save_weights(unet, tmp_path / "model.safetensors", scheduler_config=trained_with.config)
    DenoisePipeline(unet=unet, scheduler=trained_with).save_pretrained(tmp_path / "pipe")
    common = ["--num-images", "2", "--steps", "3", "--sampler", "ddim", "--seed", "5", "--quiet"]
    assert main(["sample", str(tmp_path / "model.safetensors"), "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["sample", str(tmp_path / "pipe"), "--out", str(tmp_path / "b"), *common]) == 0
    for name in ("00000.png", "00001.png"):
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(tmp_path / "a" / name)), np.asarray(PIL.Image.open(tmp_path / "b" / name)))


def test_pickle_advice_is_a_working_command(tmp_path):
    unet = UNet(**tiny_config())
    unet.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "diffusion_pytorch_model.safetensors"
    torch.save(load_weights_dict(weights), tmp_path / "m" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(FileNotFoundError) as info:
        UNet.from_pretrained(tmp_path / "m")
    command = str(info.value).split("convert it once with: ")[1]
    assert command.startswith("python -c ")
    subprocess.run([sys.executable, "-c", command[len('python -c "'):-1]], check=True, timeout=120)
    loaded = UNet.from_pretrained(tmp_path / "m")
    for name, tensor in unet.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)


def load_weights_dict(path):
    from safetensors.torch import load_file

    return load_file(str(path))


# ---------------------------------------------------------------------------- bad inputs
def test_truncated_safetensors_in_a_model_folder(tmp_path):
    UNet(**tiny_config()).save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(InputError, match="not a readable safetensors file .* truncated or corrupt"):
        UNet.from_pretrained(tmp_path / "m")
    save_weights(UNet(**tiny_config()), tmp_path / "w.safetensors")
    (tmp_path / "w.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_weights(tmp_path / "w.safetensors")


@pytest.mark.parametrize("args, message", [
    ({"chanels": [8, 16]}, "'chanels' \\(did you mean 'channels'\\?\\)"),
    ({"channels": "wide"}, "model.args: channels must be tuple\\[int, ...\\]; got 'wide' \\(str\\)"),
    ({"norm_groups": 2.5}, "model.args: norm_groups must be int; got 2.5"),
])
def test_model_args_misspelt_or_wrong_type(args, message):
    from train.diffusion import build_unet

    config = load_config(None, ["task=diffusion", "model.preset=tiny"] + [f"model.args.{k}={json.dumps(v)}" for k, v in args.items()])
    with pytest.raises(InputError, match=message):
        build_unet(config)


def test_float64_input_is_computed_in_the_model_dtype():
    unet = UNet(**tiny_config()).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(unet(x.double(), 3).sample, unet(x, 3).sample)
        assert unet(x.double(), 3).sample.dtype == torch.float32
    with pytest.raises(InputError, match="floating-point"):
        unet(torch.zeros(1, 3, 16, 16, dtype=torch.int64), 3)


def test_image_size_the_network_cannot_take_fails_before_training(tmp_path):
    from train import train

    config = load_config(write_config(tmp_path / "c.yaml", merged(TINY_DIFFUSION, data={"source": "synthetic", "image_size": 7,
                                                                                          "synthetic_size": 8})),
                         [f"train.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="data.image_size=7: .*nearest valid sizes: \\[4, 6, 8, 10\\]"):
        train(config)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_segment_skips_an_unreadable_image_and_says_so(tmp_path, capsys):
    unet = UNet(in_channels=1, out_channels=2, head="segment", channels=(8, 16), blocks_per_level=1, norm_groups=4,
                time_embedding=None, mid_attention=False, attention_levels=())
    SegmentationPipeline(unet=unet).save_pretrained(tmp_path / "seg")
    images = tmp_path / "images"
    images.mkdir()
    PIL.Image.fromarray(np.zeros((16, 16), np.uint8)).save(images / "good.png")
    (images / "broken.png").write_bytes(b"not a png")
    code = main(["segment", str(tmp_path / "seg"), str(images), "--out", str(tmp_path / "masks"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "skipped" in err and "1 of 2 images could not be read: broken.png" in err
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["good.png"]
    code = main(["segment", str(tmp_path / "seg"), str(images), "--out", str(tmp_path / "strict"), "--strict", "--quiet"])
    assert code == 1 and "cannot read" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()


def test_the_wheel_carries_the_shipped_configs(tmp_path):
    """A non-editable install has no clone beside it: the configs must travel in the wheel, as train/configs."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    import zipfile

    (wheel,) = tmp_path.glob("unet_diffusion-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for config in shipped_config_names():
        assert f"train/configs/{config}.yaml" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "unet-diffusion = unet_diffusion.cli:main" in entry_points and "sample = pipelines.commands:add_sample" in entry_points
