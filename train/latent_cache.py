"""Pre-encoded latents for latent diffusion (``diffusion.cache_latents``): every training and validation image
is encoded once by the VAE before training, and the loop reads latents instead of running the encoder each step.

The cache is a Hugging Face ``datasets`` folder (``save_to_disk``; one row per example: its index, the latents
of each flip the augmentation can draw, its label and context when the model takes them) with a
``fingerprint.json`` saying what made it: the VAE (class, config, a hash of its weights), the images (datasets'
own fingerprint of the data files, or the image files' sizes and times), the examples, the image size and
channels, the flips. A cache whose fingerprint differs is encoded again; a folder that is not a cache is never
overwritten. The cache is written beside its folder and renamed into place when complete, so an interrupted
encoding leaves nothing that could be read as a whole cache.

Each flip is encoded, not flipped in latent space: the encoder is not equivariant to flips, so the latents of a
flipped image are not the flipped latents. Training picks the flip with the same random draws as the image
transform (``draw_flip``), so a cached run trains on the latents that encoding on the fly gives (up to float rounding).
The cache is encoded in the VAE's own dtype, outside autocast; with ``train.mixed_precision`` the on-the-fly path
encodes under autocast, so the two then agree only to that precision.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import torch
from torchvision.transforms.v2 import functional as TF

from pipelines.latents import encode, vae_scale
from unet_diffusion.errors import InputError

from .config import AugmentConfig, Config, expand_path
from .data import DatasetsSource, ImageMaskPairs, SyntheticShapes
from .transforms import diffusion_flips, diffusion_transform

CACHE_FORMAT = 1                             # raise when the rows change: older caches are then encoded again
FINGERPRINT_FILE = "fingerprint.json"
FLIP_PROBE = torch.arange(4).view(1, 2, 2)   # its top-left value after the flips: 1 * horizontal + 2 * vertical


@dataclass
class CachedExample:
    """One example read from the cache, which ``DiffusionTask.prepare`` takes in place of a RawExample."""

    latents: torch.Tensor                    # (V, C, h, w): the scaled latents of each flip, in flip_variants order
    label: int | None = None
    context: torch.Tensor | None = None      # (L, D)


# ---------------------------------------------------------------------------- flips
def flip_variants(augment: AugmentConfig) -> list[int]:
    """The flips an image may get, each as 1 * horizontal + 2 * vertical, in the cache's order."""
    return [k for k in range(4) if (augment.hflip or not k & 1) and (augment.vflip or not k & 2)]


def flipped(image: torch.Tensor, variant: int) -> torch.Tensor:
    """``image`` ``(..., H, W)`` with the flips of ``variant``."""
    if variant & 1:
        image = TF.horizontal_flip(image)
    if variant & 2:
        image = TF.vertical_flip(image)
    return image


def draw_flip(latents: torch.Tensor, augment: AugmentConfig) -> torch.Tensor:
    """The latents ``(C, h, w)`` of the flip that the image transform would draw now: its own flips decide, on a probe,
    with the same random numbers."""
    probe = FLIP_PROBE
    for flip in diffusion_flips(augment):
        probe = flip(probe)
    return latents[flip_variants(augment).index(int(probe[0, 0, 0]))]


# ---------------------------------------------------------------------------- fingerprint
def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:32]


def vae_fingerprint(vae) -> dict:
    """The VAE's class, config and a hash of its weights (and their dtype)."""
    weights = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        weights.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        weights.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    config = {key: value for key, value in vae.config.items() if not key.startswith("_")}  # not where it was loaded from
    return {"class": type(vae).__name__, "config": config, "weights": weights.hexdigest()[:32]}


def images_fingerprint(source) -> str:
    """What identifies the images of ``source``: datasets' fingerprint of the loaded data (it changes with the data
    files and their modification times), the image files' names, sizes and times, or the built-in shapes' parameters."""
    if isinstance(source, DatasetsSource):
        return source.ds._fingerprint  # datasets' own identity of the table (no public name for it)
    if isinstance(source, ImageMaskPairs):
        return _digest([(str(path), path.stat().st_size, path.stat().st_mtime_ns) for path, _ in source.pairs])
    if isinstance(source, SyntheticShapes):
        return _digest(["synthetic shapes", source.size, source.count, source.channels, source.seed])
    raise InputError(f"diffusion.cache_latents caches images of a datasets, pairs or synthetic source, not of a {type(source).__name__}.")


def cache_fingerprint(vae, source, indices: list[int], config: Config, columns: dict) -> dict:
    """Everything the cached latents depend on, as plain JSON values."""
    d = config.data
    fingerprint = {"format": CACHE_FORMAT, "vae": vae_fingerprint(vae), "images": images_fingerprint(source),
                   "examples": _digest(sorted(indices)), "image_size": d.image_size, "channels": d.channels,
                   "flips": flip_variants(d.augment), "columns": columns}
    return json.loads(json.dumps(fingerprint, default=str))


def read_fingerprint(folder: Path) -> dict | None:
    """The fingerprint of the cache in ``folder``; None when there is no complete cache."""
    try:
        return json.loads((folder / FINGERPRINT_FILE).read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------- the cache
class LatentCache:
    """Cached examples, read like a source: ``load(index)`` gives a CachedExample. ``images`` is the source they were
    encoded from (for what needs the images themselves, such as the FID reference)."""

    def __init__(self, folder: Path, images):
        import datasets

        self.folder, self.images = folder, images
        table = datasets.load_from_disk(str(folder))
        self.rows = {int(index): row for row, index in enumerate(table["index"])}
        tensors = [name for name in ("latents", "context") if name in table.column_names]
        self.table = table.with_format("torch", columns=tensors, output_all_columns=True)  # labels stay ints (or None)

    def __len__(self) -> int:
        return len(self.rows)

    def name(self, index: int) -> str:
        return f"{self.images.name(index)} (latents cached in {self.folder})"

    def load(self, index: int) -> CachedExample:
        row = self.table[self.rows[index]]
        return CachedExample(row["latents"], row.get("label"), row.get("context"))


def check_cache_folder(config: Config) -> Path:
    """The cache's folder (``diffusion.latent_cache_dir``, or ``latents`` in the run's folder): a cache, empty or new;
    a folder of other files is refused, never overwritten."""
    given = config.diffusion.latent_cache_dir
    folder = Path(expand_path(given)) if given else Path(config.train.output_dir) / "latents"
    if read_fingerprint(folder) is None and folder.is_dir() and any(folder.iterdir()):
        raise InputError(f"{folder} holds files but no latent cache ({FINGERPRINT_FILE}); set diffusion.latent_cache_dir "
                         "to a new or empty folder.")
    return folder


def latent_cache(vae, source, indices: list[int], config: Config, columns: dict, log: Callable[[str], None] = print) -> LatentCache:
    """The cached latents of ``source``'s examples ``indices``: read when the cache was made for this VAE and data,
    else encoded first. ``columns`` says what else to keep: ``{"label": bool, "context": context_dim or None}``."""
    folder = check_cache_folder(config)
    fingerprint = cache_fingerprint(vae, source, indices, config, columns)
    saved = read_fingerprint(folder)
    if saved == fingerprint:
        return LatentCache(folder, source)
    changed = ", ".join(key for key in fingerprint if saved.get(key) != fingerprint[key]) if saved else None
    flips = len(flip_variants(config.data.augment))
    log(f"encoding {len(indices)} images{f' ({flips} flips of each)' if flips > 1 else ''} with the VAE into {folder}"
        + (f" (the cache there no longer matches: {changed})" if changed else ""))
    started = time.monotonic()
    _write(folder, fingerprint, partial(_encoded_rows, vae, source, sorted(indices), config, columns), _features(vae, config, columns))
    log(f"encoded {len(indices)} images in {time.monotonic() - started:.1f} s")
    return LatentCache(folder, source)


def _features(vae, config: Config, columns: dict):
    """The cache's columns: the index, the latents of each flip, and the label / context when kept."""
    import datasets

    side = config.data.image_size // vae_scale(vae)
    shape = (len(flip_variants(config.data.augment)), vae.config.latent_channels, side, side)
    features = {"index": datasets.Value("int64"), "latents": datasets.Array4D(shape, "float32")}
    if columns["label"]:
        features["label"] = datasets.Value("int64")
    if columns["context"]:
        features["context"] = datasets.Array2D((None, columns["context"]), "float32")
    return datasets.Features(features)


def _encoded_rows(vae, source, indices: list[int], config: Config, columns: dict) -> Iterator[dict]:
    """The cache's rows, encoded a batch of ``train.batch_size`` images at a time on the VAE's device."""
    variants = flip_variants(config.data.augment)
    unflipped = diffusion_transform(config.data.image_size, AugmentConfig())  # the flips commute with its dtype and scaling
    device = next(vae.parameters()).device
    per_batch = max(1, config.train.batch_size // len(variants))
    for start in range(0, len(indices), per_batch):
        chunk = indices[start:start + per_batch]
        raws = [source.load(index) for index in chunk]
        images = torch.stack([flipped(unflipped(TF.pil_to_tensor(raw.image)), k) for raw in raws for k in variants])
        latents = encode(vae, images.to(device)).cpu().unflatten(0, (len(chunk), len(variants)))  # (n, V, C, h, w)
        for index, raw, example in zip(chunk, raws, latents):
            row = {"index": index, "latents": example.numpy()}
            if columns["label"]:
                row["label"] = raw.label
            if columns["context"]:
                row["context"] = raw.context
            yield row


def _write(folder: Path, fingerprint: dict, rows: Callable[[], Iterator[dict]], features) -> None:
    """Encode into ``<folder>.partial`` and rename it to ``folder`` when complete (replacing an outdated cache)."""
    import datasets

    partial_dir, stale = folder.with_name(folder.name + ".partial"), folder.with_name(folder.name + ".stale")
    for leftover in (partial_dir, stale):  # from an earlier encoding that was interrupted
        shutil.rmtree(leftover, ignore_errors=True)
    built = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(partial_dir / "build"),
                                            fingerprint=_digest(fingerprint))
    built.save_to_disk(str(partial_dir / "latents"))
    (partial_dir / "latents" / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=1))
    if folder.exists():
        folder.rename(stale)
    (partial_dir / "latents").rename(folder)
    del built
    for leftover in (partial_dir, stale):
        shutil.rmtree(leftover, ignore_errors=True)
