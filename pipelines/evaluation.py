"""Sample quality against a reference set: FID and KID through torchmetrics (``pip install
"unet-diffusion[eval]"``), on Inception-v3 features or on the features of any model the user gives.

Why torchmetrics: it is maintained with PyTorch Lightning, computes FID and KID in torch on any
device, takes a custom feature extractor (``feature=`` any ``nn.Module``), and reads the standard
FID Inception weights (torch-fidelity's port of the TensorFlow graph) from a local file when asked.

The reference set's features are computed once and cached (``~/.cache/unet-diffusion/features``,
keyed by the folder's file names, sizes and times and by the extractor), so comparing many sample
sets with one reference reads it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from unet_diffusion.errors import InputError
from unet_diffusion.outputs import umask_modes

from .images import image_files, load_image

INCEPTION_WEIGHTS_ENV = "UNET_DIFFUSION_INCEPTION_WEIGHTS"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception weights


def cache_dir() -> Path:
    """Where reference features are kept: ``$UNET_DIFFUSION_CACHE``, else ``~/.cache/unet-diffusion/features``."""
    return Path(os.environ.get("UNET_DIFFUSION_CACHE", Path.home() / ".cache" / "unet-diffusion")) / "features"


def inception(weights: str | os.PathLike | None = None) -> nn.Module:
    """The FID Inception-v3 (2048 pool features of uint8 images), from ``weights`` or ``$UNET_DIFFUSION_INCEPTION_WEIGHTS``,
    else downloaded once into torch's hub cache; offline (``HF_HUB_OFFLINE=1``) without a file it is one clear error."""
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError:
        raise InputError('FID and KID need torchmetrics and torch-fidelity: pip install "unet-diffusion[eval]".') from None
    path = _inception_file(weights or os.environ.get(INCEPTION_WEIGHTS_ENV))
    # torch-fidelity reads the file with torch.load(weights_only=False), which would run any code a pickle holds;
    # torch's own switch makes that one read weights-only, so a file of anything but tensors is refused unread.
    with _forced_weights_only():
        try:
            return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path))
        except pickle.UnpicklingError as err:
            raise InputError(f"{path} is not a plain file of tensors and is not read (unpickling it could run code): "
                             f"{str(err).splitlines()[0]}; {_WEIGHTS_ADVICE}.") from None


@contextlib.contextmanager
def _forced_weights_only():
    """Every ``torch.load`` inside is weights-only, whatever its call site asks (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``)."""
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


_WEIGHTS_ADVICE = (f"pass --inception-weights PATH (the file {INCEPTION_FILE}) or set {INCEPTION_WEIGHTS_ENV}, "
                   "or give your own feature extractor (--features MODULE:FUNCTION)")


def _inception_file(weights: str | os.PathLike | None) -> Path:
    """The local Inception weights file: ``weights``, else torch's hub cache, downloaded there once when online
    (torch-fidelity's own download would unpickle without the weights-only restriction)."""
    advice = _WEIGHTS_ADVICE
    if weights is None:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        weights = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        if not weights.is_file():
            if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
                raise InputError(f"FID/KID need the Inception weights, which cannot be downloaded offline (HF_HUB_OFFLINE); {advice}.")
            weights.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(URL_INCEPTION_V3, str(weights))  # written to a temporary file, then moved
            except OSError as err:  # URLError and friends: no network
                raise InputError(f"the Inception weights could not be downloaded ({err}); {advice}.") from None
    weights = Path(weights)
    if not weights.is_file():
        raise InputError(f"no Inception weights at {weights}; {advice}.")
    return weights


def resized(image, size: int | None):
    """A PIL image resized to ``size`` x ``size`` (as it is when ``size`` is None or already that)."""
    return image if size is None or image.size == (size, size) else image.resize((size, size))


def image_batches(folder: str | os.PathLike, batch_size: int, size: int | None):
    """``(B, 3, H, W)`` uint8 batches of a folder's images (grey becomes RGB; ``size``: resized square)."""
    files = image_files(folder)
    for start in range(0, len(files), batch_size):
        arrays = []
        for path in files[start : start + batch_size]:
            arrays.append(np.asarray(resized(load_image(path).convert("RGB"), size)))
        if len({a.shape for a in arrays}) > 1:
            raise InputError(f"the images of {folder} differ in size; pass --image-size to resize them to one.")
        yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def first_image_size(folder: str | os.PathLike) -> tuple[int, int]:
    """The (width, height) of a folder's first image (its header only)."""
    return load_image(image_files(folder)[0]).size


def check_same_size(generated: tuple[int, int], reference: tuple[int, int], size: int | None) -> None:
    """Generated and reference images compare at one size: their own, or ``--image-size`` for both. (The feature
    network resizes whatever it gets, so 32 x 32 samples against 64 x 64 references would give a small, wrong FID.)"""
    if size is None and generated != reference:
        raise InputError(f"the generated images are {generated[0]} x {generated[1]} but the reference images are "
                         f"{reference[0]} x {reference[1]}; compare them at one size with --image-size N.")


def load_extractor(spec: str | None, inception_weights: str | os.PathLike | None = None) -> tuple[nn.Module, str]:
    """A feature extractor and its name: ``MODULE:FUNCTION`` (an importable factory of an ``nn.Module``), or the FID
    Inception-v3 for ``None``."""
    import importlib

    if spec is None:
        return inception(inception_weights), "inception-v3-compat-2048"
    module_name, _, function = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), function)(), spec
    except (ImportError, AttributeError, ValueError) as err:
        raise InputError(f"features {spec}: cannot load it ({err}); expected MODULE:FUNCTION, e.g. mypkg.features:make.") from None


@torch.no_grad()
def tensor_features(images: torch.Tensor, extractor: nn.Module, batch_size: int = 50) -> torch.Tensor:
    """``(N, D)`` float64 features of ``(N, C, H, W)`` images in [0, 1] (grey becomes RGB), on the extractor's device."""
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    device = next(extractor.parameters(), torch.empty(0)).device
    extractor.eval()
    return torch.cat([extractor(batch.to(device)).double().cpu() for batch in images.split(batch_size)])


@torch.no_grad()
def folder_features(folder: str | os.PathLike, extractor: nn.Module, batch_size: int = 50, size: int | None = None,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """``(N, D)`` float64 features of every image of ``folder``."""
    extractor = extractor.to(device).eval()
    parts = [extractor(batch.to(device)).double().cpu() for batch in image_batches(folder, batch_size, size)]
    return torch.cat(parts)


def _cache_key(folder: Path, extractor_name: str, size: int | None) -> str:
    digest = hashlib.sha1(f"{extractor_name}|{size}".encode())
    for path in image_files(folder):
        stat = path.stat()
        digest.update(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def reference_features(folder: str | os.PathLike, extractor: nn.Module, extractor_name: str, *, cache: bool = True,
                       **options) -> torch.Tensor:
    """``folder_features`` of a reference folder, read from the cache when the folder has not changed."""
    path = cache_dir() / f"{_cache_key(Path(folder), extractor_name, options.get('size'))}.safetensors"
    if cache and path.is_file():
        return load_file(path)["features"]
    features = folder_features(folder, extractor, **options)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".tmp")
        save_file({"features": features.contiguous()}, staging)
        umask_modes(staging)  # save_file writes 0600
        staging.replace(path)  # written whole or not at all
    return features


class _Given(nn.Module):
    """Features that are already computed, passed through (torchmetrics calls its extractor on its input)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def distances(generated: torch.Tensor, reference: torch.Tensor, kid_subset_size: int = 1000) -> dict[str, float]:
    """FID and KID (mean and standard deviation over subsets) between two ``(N, D)`` feature sets, by torchmetrics."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    subset = min(kid_subset_size, len(generated), len(reference))
    if subset < 2:
        raise InputError(f"FID/KID need at least 2 images on each side; got {len(generated)} and {len(reference)}.")
    fid = FrechetInceptionDistance(feature=_Given(), input_img_size=(reference.shape[1],))
    with warnings.catch_warnings():  # "KID keeps every feature": these are in memory already
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Given(), subset_size=subset)
    for metric in (fid, kid):
        metric.update(reference, real=True)
        metric.update(generated, real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": fid.compute().item(), "kid": kid_mean.item(), "kid_std": kid_std.item(),
            "generated": len(generated), "reference": len(reference)}
