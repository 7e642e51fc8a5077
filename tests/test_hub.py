"""Hub ids and diffusers' loading options, offline: the repositories live in a
local cache laid out the way huggingface_hub lays it out (models--org--name/refs, snapshots/<commit>)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from diffusers import DDIMScheduler, DDPMPipeline, UNet2DModel

from unet_diffusion import InputError, UNet
from unet_diffusion.hub import resolve

COMMIT_MAIN, COMMIT_V1 = "a" * 40, "b" * 40


def cached_repo(cache: Path, repo: str, folder: Path, commit: str = COMMIT_MAIN, ref: str = "main") -> None:
    """Put ``folder`` into the cache ``cache`` as repository ``repo`` at ``commit``, named by ``ref``."""
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)


def small_unet2d() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8).eval()


@pytest.fixture
def hub(tmp_path):
    """A cache with our UNet ("me/ours", revisions main and v1) and a diffusers DDPMPipeline ("them/ddpm")."""
    cache = tmp_path / "hub"
    ours = UNet(**tiny_config()).eval()
    ours.save_pretrained(tmp_path / "ours")
    cached_repo(cache, "me/ours", tmp_path / "ours")
    other = UNet(**tiny_config(channels=(8, 16))).eval()
    other.save_pretrained(tmp_path / "other")
    cached_repo(cache, "me/ours", tmp_path / "other", COMMIT_V1, ref="v1")
    theirs = small_unet2d()
    DDPMPipeline(unet=theirs, scheduler=DDIMScheduler(num_train_timesteps=50)).save_pretrained(tmp_path / "ddpm")
    cached_repo(cache, "them/ddpm", tmp_path / "ddpm")
    return cache, ours, theirs


def test_hub_ids_load_from_the_cache_offline(hub):
    cache, ours, theirs = hub
    x = torch.randn(1, 3, 16, 16)
    loaded = UNet.from_pretrained("me/ours", cache_dir=cache, local_files_only=True)
    assert torch.equal(loaded(x, 5).sample, ours(x, 5).sample)
    assert UNet.from_pretrained("me/ours", cache_dir=cache, local_files_only=True, revision="v1").config.channels == [8, 16]
    converted = UNet.from_pretrained("them/ddpm", subfolder="unet", cache_dir=cache, local_files_only=True)
    y = torch.randn(1, 1, 8, 8)
    torch.testing.assert_close(converted(y, 7).sample, theirs(y, 7).sample, atol=1e-5, rtol=0)


def test_a_repository_missing_from_the_cache_says_how_to_get_it(hub):
    cache, _, _ = hub
    with pytest.raises(InputError, match=r"org/missing is not in the Hugging Face cache.*hf download org/missing"):
        UNet.from_pretrained("org/missing", cache_dir=cache, local_files_only=True)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        resolve("./not/here")


@pytest.mark.parametrize("kind", ["ours", "diffusers"])
def test_diffusers_loading_options_mean_the_same_for_both_kinds_of_folder(hub, kind):
    cache, _, _ = hub
    repo, sub = ("me/ours", None) if kind == "ours" else ("them/ddpm", "unet")
    options = dict(cache_dir=cache, local_files_only=True, subfolder=sub)
    half = UNet.from_pretrained(repo, torch_dtype=torch.float16, **options)
    assert half.dtype == torch.float16
    assert UNet.from_pretrained(repo, dtype=torch.bfloat16, **options).dtype == torch.bfloat16
    model = UNet.from_pretrained(repo, device_map="cpu", low_cpu_mem_usage=True, use_safetensors=True, **options)
    assert model.device.type == "cpu"
    with pytest.raises(InputError, match="safetensors only"):
        UNet.from_pretrained(repo, use_safetensors=False, **options)
    model, info = UNet.from_pretrained(repo, output_loading_info=True, **options)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])


def test_pipelines_and_the_command_line_take_hub_ids(hub, tmp_path):
    from pipelines import DenoisePipeline

    cache, _, theirs = hub
    pipe = DenoisePipeline.from_pretrained("them/ddpm", cache_dir=cache, local_files_only=True)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.unet.config.in_channels == 1
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    for args in (["sample", "them/ddpm", "--out", str(tmp_path / "s"), "--steps", "2", "--batch-size", "1", "--quiet"],
                 ["convert", "me/ours", str(tmp_path / "c")]):
        done = subprocess.run([sys.executable, "-m", "unet_diffusion.cli", *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert any((tmp_path / "s").glob("*.png")) and (tmp_path / "c" / "config.json").is_file()
