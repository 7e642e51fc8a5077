"""Weights: save_pretrained / from_pretrained and single-file round trips, strict loading."""

import json

import pytest
import torch
from conftest import tiny_config

from unet_diffusion import CheckpointMismatchError, UNet, load_weights, save_weights


def outputs(model):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 16, 16)
    return model.eval()(x, torch.tensor([2, 900]), class_labels=torch.tensor([1, 2])).sample


@pytest.fixture
def model():
    return UNet(**tiny_config(num_class_labels=3, time_embedding="fourier"))


def test_save_pretrained_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = UNet.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    torch.testing.assert_close(outputs(loaded), outputs(model), atol=0, rtol=0)


def test_sharded_and_variant_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path, max_shard_size="50KB", variant="fp16")
    assert list(tmp_path.glob("*.index.fp16.json")) or list(tmp_path.glob("*.fp16.safetensors.index.json"))
    loaded = UNet.from_pretrained(tmp_path, variant="fp16")
    torch.testing.assert_close(outputs(loaded), outputs(model), atol=0, rtol=0)


def test_single_file_round_trip(model, tmp_path):
    path = save_weights(model, tmp_path / "model.safetensors")
    loaded = load_weights(path)
    assert loaded.config.time_embedding == "fourier" and loaded.config.num_class_labels == 3
    torch.testing.assert_close(outputs(loaded), outputs(model), atol=0, rtol=0)


def test_mismatched_folder_lists_missing_unexpected_and_shapes(model, tmp_path):
    model.save_pretrained(tmp_path / "a")
    other = UNet(**tiny_config(num_class_labels=3, time_embedding="fourier", channels=(16, 24), norm_groups=4))
    other.save_pretrained(tmp_path / "b")
    # Weights of a, config of b.
    (tmp_path / "b" / "diffusion_pytorch_model.safetensors").write_bytes(
        (tmp_path / "a" / "diffusion_pytorch_model.safetensors").read_bytes()
    )
    with pytest.raises(CheckpointMismatchError, match=r"(?s)shape mismatches .*model \(24,\), checkpoint \(32,\)"):
        UNet.from_pretrained(tmp_path / "b")


def test_missing_tensor_is_an_error_not_random_init(model, tmp_path):
    from safetensors.torch import load_file, save_file

    model.save_pretrained(tmp_path)
    file = tmp_path / "diffusion_pytorch_model.safetensors"
    tensors = load_file(file)
    tensors.pop("out.conv.weight")
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, file)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)missing .*out\.conv\.weight.*unexpected .*extra\.weight"):
        UNet.from_pretrained(tmp_path)


def test_single_file_into_wrong_model_fails(model, tmp_path):
    path = save_weights(model, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointMismatchError, match="missing from the checkpoint"):
        load_weights(path, model=UNet(**tiny_config(num_class_labels=3, mid_block=False, channels=(16, 16, 32))))


def test_corrupt_single_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_weights(path)


def test_unknown_config_key_is_an_error(model, tmp_path):
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["chanels"] = [1, 2]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown UNet fields: 'chanels' \\(did you mean 'channels'\\?\\)"):
        UNet.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="chanels"):
        UNet.from_config(config)
