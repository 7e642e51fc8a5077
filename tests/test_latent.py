"""Latent diffusion: a DenoisePipeline with a diffusers VAE samples latents and decodes them to images; training encodes
the images on the fly or once, into a cache of latents."""

import pytest
import torch
from conftest import tiny_config
from diffusers import AutoencoderKL, DDPMScheduler

from pipelines import DenoisePipeline
from unet_diffusion import InputError, UNet
from unet_diffusion.cli import main


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """A small random AutoencoderKL: 3-channel images, 4-channel latents at half the size."""
    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                         norm_num_groups=4, sample_size=16, scaling_factor=0.5).eval()


@pytest.fixture
def latent_pipeline():
    unet = UNet(**tiny_config(in_channels=4, sample_size=8)).eval()
    return DenoisePipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50), vae=tiny_vae())


def test_latents_are_decoded_to_images(latent_pipeline):
    latents = latent_pipeline(batch_size=2, num_inference_steps=2, output_type="latent",
                              generator=torch.Generator().manual_seed(0)).images
    images = latent_pipeline(batch_size=2, num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert latents.shape == (2, 4, 8, 8) and images.shape == (2, 3, 16, 16)
    with torch.no_grad():
        expected = (latent_pipeline.vae.decode(latents / 0.5).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(images, expected)


def test_image_to_image_and_inpainting_run_on_the_latents(latent_pipeline):
    from pipelines.latents import decode, encode

    image = torch.rand(1, 3, 16, 16)
    kept = latent_pipeline(image=image, strength=0.0, num_inference_steps=4, output_type="pt").images
    with torch.no_grad():
        round_trip = (decode(latent_pipeline.vae, encode(latent_pipeline.vae, image * 2 - 1)) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(kept, round_trip)  # strength 0: the image through the VAE and back
    mask = torch.zeros(16, 16)
    mask[:, 8:] = 1  # generate the right half
    latents = latent_pipeline(image=image, mask_image=mask, num_inference_steps=3, output_type="latent",
                              generator=torch.Generator().manual_seed(0)).images
    with torch.no_grad():
        known = encode(latent_pipeline.vae, image * 2 - 1)
    torch.testing.assert_close(latents[..., :4], known[..., :4])  # the kept half's latents are the image's
    assert (latents[..., 4:] - known[..., 4:]).abs().max() > 1e-3


def test_a_latent_pipeline_folder_saves_loads_and_samples_from_the_cli(latent_pipeline, tmp_path):
    latent_pipeline.save_pretrained(tmp_path / "pipe")
    loaded = DenoisePipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(loaded.vae, AutoencoderKL)
    kwargs = dict(batch_size=1, num_inference_steps=2, output_type="pt")
    torch.testing.assert_close(loaded(**kwargs, generator=torch.Generator().manual_seed(3)).images,
                               latent_pipeline(**kwargs, generator=torch.Generator().manual_seed(3)).images)
    assert main(["sample", str(tmp_path / "pipe"), "--out", str(tmp_path / "out"), "--num-images", "2", "--steps", "2",
                 "--quiet"]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "out" / "00000.png").size == (16, 16)


def test_the_vae_and_the_unet_must_agree_on_latent_channels():
    with pytest.raises(InputError, match="latents have 4 channels but the U-Net takes 3"):
        DenoisePipeline(unet=UNet(**tiny_config()), scheduler=DDPMScheduler(), vae=tiny_vae())


def test_training_on_vae_latents_then_sampling_images_from_the_cli(tmp_path):
    from trainkit import TINY_DIFFUSION, merged

    from train.config import config_from_dict
    from train.loop import train

    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=4, sample_size=16, scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae")
    values = merged(TINY_DIFFUSION, data={"image_size": 16}, diffusion={"vae": str(tmp_path / "vae")},
                    train={"steps": 3, "output_dir": str(tmp_path / "run")})
    result = train(config_from_dict(values))
    unet_config = UNet.from_pretrained(result.run_dir / "pipeline" / "unet").config
    assert (unet_config.in_channels, unet_config.sample_size) == (4, 8)  # the latents' channels and size
    assert (result.run_dir / "pipeline" / "vae" / "config.json").is_file()
    assert main(["sample", str(result.run_dir / "pipeline"), "--out", str(tmp_path / "out"), "--num-images", "2",
                 "--steps", "2", "--class-label", "1", "--quiet"]) == 0
    from PIL import Image

    image = Image.open(tmp_path / "out" / "00000.png")
    assert image.size == (16, 16) and image.mode == "RGB"
    values["diffusion"]["vae"] = str(tmp_path / "missing")
    with pytest.raises(InputError, match="diffusion.vae="):
        train(config_from_dict(values))


# ---------------------------------------------------------------------------- the latent cache (diffusion.cache_latents)
def saved_vae(folder, seed: int = 0) -> str:
    tiny_vae(seed).save_pretrained(folder)
    return str(folder)


def latent_values(tmp_path, vae: str, **sections) -> dict:
    """A tiny latent-diffusion run: 16x16 shapes, 8x8 latents, flips, 4 examples held out."""
    from trainkit import TINY_DIFFUSION, merged

    base = merged(TINY_DIFFUSION, data={"image_size": 16, "synthetic_size": 24, "val_size": 4, "augment": {"hflip": True, "vflip": True}},
                  diffusion={"vae": vae, "cache_latents": True}, train={"steps": 3, "checkpoint_every": 0, "output_dir": str(tmp_path / "run")})
    return merged(base, **{name: {**base.get(name, {}), **values} for name, values in sections.items()})


def cache_for(values: dict, log=None):
    """The latent cache of a run's examples, built (or read) as a run would, without training."""
    from train.config import config_from_dict
    from train.data import open_source
    from train.diffusion import load_vae
    from train.latent_cache import latent_cache

    config = config_from_dict(values)
    source = open_source(config)
    indices = list(range(min(len(source), config.data.limit or len(source))))
    return latent_cache(load_vae(config.diffusion.vae), source, indices, config, {"label": True, "context": None},
                        log or (lambda text: None))


def test_cached_latents_are_a_datasets_folder_of_each_flip_that_a_resumed_run_reads_again(tmp_path, monkeypatch):
    import datasets
    from torchvision.transforms.v2.functional import pil_to_tensor

    from pipelines.latents import encode
    from train.config import AugmentConfig, config_from_dict
    from train.data import open_source
    from train.loop import train
    from train.transforms import diffusion_transform

    values = latent_values(tmp_path, saved_vae(tmp_path / "vae"))
    lines = []
    result = train(config_from_dict(values), log=lines.append)
    assert any(line.startswith("encoding 24 images (4 flips of each) with the VAE into") for line in lines)
    table = datasets.load_from_disk(str(result.run_dir / "latents")).with_format("torch")
    assert len(table) == 24 and table[0]["latents"].shape == (4, 4, 8, 8)  # every example, each of its 4 flips
    raw = open_source(config_from_dict(values)).load(int(table[5]["index"]))
    image = diffusion_transform(16, AugmentConfig())(pil_to_tensor(raw.image))  # (3, 16, 16), not flipped
    plain, hflipped = encode(tiny_vae(), image[None]), encode(tiny_vae(), image.flip(-1)[None])
    torch.testing.assert_close(table[5]["latents"][0], plain[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(table[5]["latents"][1], hflipped[0], rtol=1e-5, atol=1e-5)  # the flipped image, encoded
    assert (hflipped - plain.flip(-1)).abs().max() > 1e-3  # which is not the flipped latents

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cache was encoded again")

    monkeypatch.setattr("train.latent_cache._encoded_rows", no_encoding)
    values["train"]["steps"] = 5
    lines.clear()
    assert train(config_from_dict(values), resume="latest", log=lines.append).step == 5
    assert not any("encoding" in line for line in lines)


def test_training_on_cached_latents_equals_encoding_each_batch(tmp_path):
    from safetensors.torch import load_file

    from train.config import config_from_dict
    from train.loop import build_task, train

    vae = saved_vae(tmp_path / "vae")
    runs = {}
    for cached in (False, True):
        values = latent_values(tmp_path / str(cached), vae, diffusion={"cache_latents": cached}, ema={"enabled": False})
        task = build_task(config_from_dict(values))
        result = train(task.config, task=task, log=lambda text: None)
        runs[cached] = result, load_file(result.run_dir / "model.safetensors"), task._validation_images(task.trainer.val_examples)
    (plain, plain_weights, plain_images), (cached, cached_weights, cached_images) = runs[False], runs[True]
    assert sorted(cached.losses) == [1, 2, 3] and (tmp_path / "True" / "run" / "latents").is_dir()
    assert not (tmp_path / "False" / "run" / "latents").exists()
    for step, loss in plain.losses.items():  # the same latents, noise and timesteps: the same losses and weights
        assert cached.losses[step] == pytest.approx(loss, rel=1e-6)  # measured: equal to 6e-8 (a wrong flip: 2e-5)
    assert cached.metrics["val_loss"] == pytest.approx(plain.metrics["val_loss"], rel=1e-6)
    for name, weight in plain_weights.items():
        torch.testing.assert_close(cached_weights[name], weight, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cached_images, plain_images, rtol=0, atol=0)  # FID's reference images: from the image source


def test_a_cache_for_another_vae_or_other_data_is_encoded_again(tmp_path):
    from train.latent_cache import read_fingerprint

    shared = {"latent_cache_dir": str(tmp_path / "cache")}
    values = latent_values(tmp_path, saved_vae(tmp_path / "vae"), diffusion=shared)
    lines = []
    first = cache_for(values, lines.append)
    assert len(first) == 24 and len(lines) == 2 and lines[1].startswith("encoded 24 images in")
    cache_for(values, lines.append)
    assert len(lines) == 2  # read, not encoded again
    changes = [("vae", "diffusion", "vae", saved_vae(tmp_path / "vae1", seed=1)), ("examples", "data", "limit", 20),
               ("images, image_size", "data", "image_size", 12),  # the built-in shapes are drawn at the image size
               ("flips", "data", "augment", {"hflip": True})]
    for changed, section, key, value in changes:  # one more change each time
        values[section][key] = value
        assert len(cache_for(values, lines.append)) == values["data"].get("limit", 24)
        assert lines[-2].endswith(f"(the cache there no longer matches: {changed})")
    assert read_fingerprint(tmp_path / "cache")["flips"] == [0, 1]


def test_an_interrupted_encoding_leaves_no_cache_that_reads_as_complete(tmp_path, monkeypatch):
    import train.latent_cache as latent_cache
    from train.latent_cache import read_fingerprint

    shared = {"latent_cache_dir": str(tmp_path / "cache")}
    values = latent_values(tmp_path, saved_vae(tmp_path / "vae"), diffusion=shared)
    cache_for(values)
    before = read_fingerprint(tmp_path / "cache")
    encoded_rows = latent_cache._encoded_rows

    def interrupted(*args):
        rows = encoded_rows(*args)
        yield next(rows)
        raise RuntimeError("killed while encoding")

    monkeypatch.setattr(latent_cache, "_encoded_rows", interrupted)
    other = latent_values(tmp_path, saved_vae(tmp_path / "vae1", seed=1), diffusion=shared)
    with pytest.raises(Exception):
        cache_for(other)
    assert read_fingerprint(tmp_path / "cache") == before  # the old cache is whole and still its own
    assert (tmp_path / "cache.partial").is_dir()
    monkeypatch.setattr(latent_cache, "_encoded_rows", encoded_rows)
    lines = []
    assert len(cache_for(other, lines.append)) == 24 and lines[0].endswith("no longer matches: vae)")
    assert not (tmp_path / "cache.partial").exists()


def test_a_folder_that_is_not_a_cache_is_refused_and_the_cache_needs_a_vae(tmp_path):
    from train.config import ConfigError, config_from_dict
    from train.loop import build_task

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    values = latent_values(tmp_path, saved_vae(tmp_path / "vae"), diffusion={"latent_cache_dir": str(tmp_path / "mine")})
    with pytest.raises(InputError, match=r"mine holds files but no latent cache \(fingerprint.json\); set diffusion.latent_cache_dir"):
        cache_for(values)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    values["diffusion"]["vae"] = None
    with pytest.raises(ConfigError, match="diffusion.cache_latents caches a VAE's latents: set diffusion.vae"):
        build_task(config_from_dict(values))


def test_the_shipped_latent_config_trains_with_a_small_stand_in_autoencoder_tiny(tmp_path):
    from diffusers import AutoencoderTiny

    from train.config import load_config
    from train.loop import train

    stand_in = AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
                               num_decoder_blocks=(1, 1))  # the config's VAE class, with 2x smaller latents
    stand_in.save_pretrained(tmp_path / "vae")
    config = load_config("isbi2012_latent", [f"diffusion.vae={tmp_path / 'vae'}", "data.source=synthetic",
                                             "data.synthetic_size=6", "data.image_size=16", "data.val_size=2",
                                             "train.steps=2", "train.budget_minutes=null", "train.batch_size=2",
                                             "diffusion.num_samples=2", "diffusion.sample_steps=2",
                                             f"train.output_dir={tmp_path / 'run'}", "train.progress_bar=false"])
    assert config.diffusion.cache_latents and config.diffusion.vae.endswith("vae")
    result = train(config, log=lambda text: None)
    assert result.step == 2 and (result.run_dir / "latents" / "fingerprint.json").is_file()
    assert (result.run_dir / "pipeline" / "vae" / "config.json").is_file()


def test_the_images_fingerprint_follows_the_data_files(tmp_path):
    import os

    import datasets
    from PIL import Image

    from train.config import load_config
    from train.data import open_source
    from train.latent_cache import images_fingerprint

    for folder in ("image", "label"):
        (tmp_path / folder).mkdir()
        for k in range(3):
            Image.new("L", (8, 8), 40 * k).save(tmp_path / folder / f"{k}.png")
    datasets.Dataset.from_dict({"image": [str(tmp_path / "image" / f"{k}.png") for k in range(3)]}).cast_column(
        "image", datasets.Image()).to_parquet(str(tmp_path / "images.parquet"))
    sources = {"pairs": ["data.source=pairs", f"data.image_dir={tmp_path / 'image'}", f"data.mask_dir={tmp_path / 'label'}"],
               "datasets": ["data.source=datasets", "data.path=parquet", f"data.data_files={tmp_path / 'images.parquet'}"]}
    changed = {"pairs": tmp_path / "image" / "1.png", "datasets": tmp_path / "images.parquet"}
    for name, overrides in sources.items():
        before = images_fingerprint(open_source(load_config(None, overrides)))
        assert images_fingerprint(open_source(load_config(None, overrides))) == before
        os.utime(changed[name], ns=(1, 10**18))  # the same path, another modification time: other data as far as anyone knows
        assert images_fingerprint(open_source(load_config(None, overrides))) != before, name
