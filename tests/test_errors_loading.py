"""Loading and training inputs that are wrong end in one line that names the file, the tensor or the field;
inputs that are fine (an fp16 variant, a faster code path on resume) load without complaint."""

import numpy as np
import pytest
import torch
from conftest import tiny_config
from diffusers import DDIMScheduler
from safetensors.torch import load_file, save_file
from trainkit import TINY_DIFFUSION, merged, write_config

from pipelines import DenoisePipeline
from train import load_config, train
from train.config import config_from_dict, expand_path
from train.data import open_source
from unet_diffusion import InputError, UNet, load_weights, save_weights
from unet_diffusion.cli import main
from unet_diffusion.weights import read_weights_metadata


def tiny_run(tmp_path, **sections):
    values = merged(TINY_DIFFUSION, **sections)
    values["train"] = {**values["train"], "output_dir": str(tmp_path / "run"), "cpu_threads": 1}
    return config_from_dict(values)


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


# ---------------------------------------------------------------------------- empty training data
def empty_parquet(path):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    datasets.Dataset.from_dict({"image": [], "label": []}, features=features).to_parquet(str(path))
    return path


def test_a_parquet_file_without_rows_is_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Written by datasets, and by pyarrow alone (datasets fails on the second with an Arrow batch-size error).
    by_arrow = tmp_path / "arrow.parquet"
    pq.write_table(pa.table({"image": pa.array([], pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                             "label": pa.array([], pa.int64())}), by_arrow)
    for path in (empty_parquet(tmp_path / "datasets.parquet"), by_arrow):
        config = load_config(None, ["data.source=datasets", "data.path=parquet", f"data.data_files={path}"])
        with pytest.raises(InputError) as caught:
            open_source(config)
        assert str(path) in str(caught.value) and len(str(caught.value).splitlines()) == 1


def test_an_empty_array_file_is_one_line(tmp_path):
    np.save(tmp_path / "none.npy", np.zeros((0, 1, 8, 8, 8), np.float32))
    config = load_config(None, ["data.source=arrays", f"data.data_files={tmp_path / 'none.npy'}", "model.args={dims: 3}"])
    with pytest.raises(InputError, match="none.npy"):
        open_source(config)


# ---------------------------------------------------------------------------- the datasets folder
def test_the_data_folder_is_found_from_the_current_folder_not_the_package(tmp_path, monkeypatch):
    monkeypatch.delenv("UNET_DATA_DIR", raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    assert expand_path("${UNET_DATA_DIR}/mnist/train.parquet") == str(tmp_path / "shared" / "data" / "mnist" / "train.parquet")
    monkeypatch.chdir(tmp_path)  # no ../shared/data from here
    with pytest.raises(FileNotFoundError) as caught:
        expand_path("${UNET_DATA_DIR}/mnist/train.parquet")
    assert str(tmp_path.parent / "shared" / "data") in str(caught.value) and "UNET_DATA_DIR" in str(caught.value)
    monkeypatch.setenv("UNET_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        expand_path("$UNET_DATA_DIR/x")


# ---------------------------------------------------------------------------- resuming a run
def test_resume_names_only_the_changed_fields_and_allows_execution_settings(tmp_path):
    first = tiny_run(tmp_path, train={"steps": 2, "checkpoint_every": 2})
    train(first)
    faster = tiny_run(tmp_path, train={"steps": 3, "checkpoint_every": 2},
                      model={"fused_norm_conv": not first.model.fused_norm_conv, "gradient_checkpointing": True})
    assert train(faster, resume="latest").step == 3
    args = {**first.model.args, "channels": [8, 32]}
    with pytest.raises(InputError) as caught:
        train(tiny_run(tmp_path, train={"steps": 4}, model={"args": args}), resume="latest")
    message = str(caught.value)
    assert "model.args.channels: saved [8, 16], now [8, 32]" in message
    assert "num_class_labels" not in message and "fused_norm_conv" not in message  # only what differs


# ---------------------------------------------------------------------------- overrides the user never typed
def test_quiet_is_not_quoted_as_an_override(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml", TINY_DIFFUSION)
    assert main(["train", "--config", str(config), "--quiet", "train.steps=many"]) == 1
    err = one_error_line(capsys)
    assert "train.steps=many" in err and "progress_bar" not in err
