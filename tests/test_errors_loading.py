"""Loading and training inputs that are wrong end in one line that names the file, the tensor or the field;
inputs that are fine (an fp16 variant, a faster code path on resume) load without complaint."""

import pytest
import torch
from conftest import tiny_config
from diffusers import DDIMScheduler
from safetensors.torch import load_file, save_file

from pipelines import DenoisePipeline
from unet_diffusion import InputError, UNet, load_weights, save_weights
from unet_diffusion.cli import main
from unet_diffusion.weights import read_weights_metadata


def truncate(path, keep=40):
    path.write_text(path.read_text()[:keep])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------- broken config files
@pytest.mark.parametrize("command", ["convert", "sample"])
def test_truncated_config_json_is_one_line_naming_the_file(tmp_path, capsys, command):
    UNet(**tiny_config()).save_pretrained(tmp_path / "model")
    truncate(tmp_path / "model" / "config.json")
    args = {"convert": [str(tmp_path / "out")], "sample": ["--out", str(tmp_path / "out"), "--num-images", "1", "--quiet"]}
    assert main([command, str(tmp_path / "model"), *args[command]]) == 1
    err = one_error_line(capsys)
    assert str(tmp_path / "model" / "config.json") in err and "line 3" in err  # the file and where it breaks


@pytest.mark.parametrize("broken", ["model_index.json", "unet/config.json", "scheduler/scheduler_config.json"])
def test_any_broken_json_of_a_pipeline_folder_is_named(tmp_path, capsys, broken):
    DenoisePipeline(unet=UNet(**tiny_config()), scheduler=DDIMScheduler()).save_pretrained(tmp_path / "pipe")
    truncate(tmp_path / "pipe" / broken, keep=30)
    assert main(["sample", str(tmp_path / "pipe"), "--out", str(tmp_path / "out"), "--num-images", "1", "--quiet"]) == 1
    assert str(tmp_path / "pipe" / broken) in one_error_line(capsys)


def test_config_json_that_is_not_an_object(tmp_path):
    UNet(**tiny_config()).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="config.json"):
        UNet.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------- tensors of another kind
def rewrite_tensor(path, name, dtype):
    """The weights file with one tensor stored as ``dtype`` (metadata kept)."""
    tensors = load_file(path)
    tensors[name] = tensors[name].to(dtype)
    save_file(tensors, path, metadata=read_weights_metadata(path))


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_load_weights_refuses_integer_or_bool_tensors_for_float_parameters(tmp_path, dtype):
    path = save_weights(UNet(**tiny_config()), tmp_path / "model.safetensors")
    name = "out.conv.weight"
    rewrite_tensor(path, name, dtype)
    with pytest.raises(InputError) as caught:
        load_weights(path)
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert name in message and str(dtype).removeprefix("torch.") in message and "float32" in message


def test_from_pretrained_refuses_an_integer_tensor_before_loading(tmp_path):
    UNet(**tiny_config()).save_pretrained(tmp_path)
    rewrite_tensor(tmp_path / "diffusion_pytorch_model.safetensors", "out.conv.bias", torch.int64)
    with pytest.raises(InputError, match=r"out\.conv\.bias.*int64"):
        UNet.from_pretrained(tmp_path)


def test_float_precisions_still_convert(tmp_path):
    model = UNet(**tiny_config())
    path = save_weights(model.half(), tmp_path / "model.safetensors")
    loaded = load_weights(path, model=UNet(**tiny_config()))
    assert loaded.out.conv.weight.dtype == torch.float32
    assert torch.equal(loaded.out.conv.weight, model.out.conv.weight.float())


# ---------------------------------------------------------------------------- the fused op on the meta device
def test_fused_model_runs_forward_and_backward_on_the_meta_device():
    with torch.device("meta"):
        model = UNet(**tiny_config(dropout=0.1))
    model.set_fused_norm_conv(True)
    model.train()
    x = torch.empty(2, 3, 16, 16, device="meta", requires_grad=True)
    out = model(x, torch.tensor([1, 2], device="meta")).sample
    assert out.shape == (2, 3, 16, 16) and out.is_meta
    out.sum().backward()
    assert x.grad.shape == x.shape
