"""`unet-diffusion evaluate`: FID and KID through torchmetrics, with a local feature extractor."""

import json
import shutil

import numpy as np
import pytest
import torch
from feature_stand_in import small_features
from PIL import Image

from unet_diffusion.cli import main

pytest.importorskip("torchmetrics")


def image_folder(folder, seed, count=12, brightness=1.0):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = (rng.random((16, 16, 3)) * 255 * brightness).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return folder


def uint8_batch(folder):
    return torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1) for p in sorted(folder.glob("*.png"))])


def test_fid_and_kid_equal_torchmetrics_on_the_same_features(tmp_path, monkeypatch, capsys):
    from torchmetrics.image.fid import FrechetInceptionDistance

    monkeypatch.setenv("UNET_DIFFUSION_CACHE", str(tmp_path / "cache"))
    generated, reference = image_folder(tmp_path / "gen", 1, brightness=0.7), image_folder(tmp_path / "ref", 2)
    args = ["evaluate", str(generated), str(reference), "--features", "feature_stand_in:small_features", "--kid-subset-size", "6"]
    assert main([*args, "--json", str(tmp_path / "scores.json")]) == 0
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert "FID" in capsys.readouterr().out and scores["generated"] == scores["reference"] == 12
    library = FrechetInceptionDistance(feature=small_features(), input_img_size=(3, 16, 16))
    library.update(uint8_batch(reference), real=True)
    library.update(uint8_batch(generated), real=False)
    assert scores["fid"] == pytest.approx(library.compute().item(), rel=1e-6)
    assert scores["fid"] > 0.01 and scores["kid"] > 0
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 1  # the reference, cached
    shutil.copytree(reference, tmp_path / "same")
    assert main(["evaluate", str(tmp_path / "same"), str(reference), "--features", "feature_stand_in:small_features",
                 "--json", str(tmp_path / "same.json")]) == 0
    assert abs(json.loads((tmp_path / "same.json").read_text())["fid"]) < 1e-6


def test_without_inception_weights_offline_the_error_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("UNET_DIFFUSION_INCEPTION_WEIGHTS", raising=False)
    folder = image_folder(tmp_path / "a", 1)
    assert main(["evaluate", str(folder), str(folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--inception-weights PATH" in err and "offline" in err
    assert main(["evaluate", str(folder), str(folder), "--inception-weights", str(tmp_path / "nope.pth")]) == 1
    assert "no Inception weights at" in capsys.readouterr().err


def test_training_reports_fid_and_kid_of_ema_samples(tmp_path):
    from trainkit import TINY_DIFFUSION, merged

    from train.config import config_from_dict
    from train.loop import read_log, train

    values = merged(TINY_DIFFUSION, data={"val_size": 8}, train={"steps": 2, "eval_every": 2, "output_dir": str(tmp_path / "run")},
                    diffusion={"eval_samples": 6, "eval_features": "feature_stand_in:small_features"})
    result = train(config_from_dict(values))
    assert result.metrics["fid"] > 0 and "kid" in result.metrics
    assert any("fid" in (r.get("eval") or {}) for r in read_log(result.run_dir))


class _Payload:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_inception_weights_that_are_not_plain_tensors_are_never_unpickled(tmp_path, capsys):
    folder = image_folder(tmp_path / "a", 1)
    marker = tmp_path / "ran"
    torch.save({"fc.weight": _Payload(marker)}, tmp_path / "evil.pth")
    assert main(["evaluate", str(folder), str(folder), "--inception-weights", str(tmp_path / "evil.pth")]) == 1
    assert "not a plain file of tensors" in capsys.readouterr().err
    assert not marker.exists()


def test_evaluate_samples_a_model_as_sample_would_and_scores_it(tmp_path, monkeypatch, capsys):
    from conftest import tiny_config
    from diffusers import DDIMScheduler

    from pipelines import DenoisePipeline
    from unet_diffusion import UNet

    monkeypatch.setenv("UNET_DIFFUSION_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    DenoisePipeline(unet=UNet(**tiny_config(num_class_labels=3)), scheduler=DDIMScheduler()).save_pretrained(model)
    reference = image_folder(tmp_path / "ref", 2)
    sampling = ["--num-images", "6", "--steps", "2", "--seed", "4", "--quiet"]
    features = ["--features", "feature_stand_in:small_features", "--kid-subset-size", "3"]
    assert main(["evaluate", str(model), str(reference), *features, *sampling, "--json", str(tmp_path / "model.json")]) == 0
    # The same images through `sample` (the classes in turn) and a folder: the same scores.
    assert main(["sample", str(model), "--out", str(tmp_path / "samples"), "--class-label", "0", "1", "2", "0", "1", "2", *sampling]) == 0
    (tmp_path / "samples" / "grid.png").unlink()
    assert main(["evaluate", str(tmp_path / "samples"), str(reference), *features, "--json", str(tmp_path / "folder.json")]) == 0
    from_model, from_folder = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("model", "folder"))
    assert from_model["generated"] == 6 and from_model["fid"] == pytest.approx(from_folder["fid"], rel=1e-6)
    assert main(["evaluate", str(model), str(reference), *features, "--num-images", "0"]) == 1
    assert "--num-images must be at least 1" in capsys.readouterr().err
