"""Images in and out of the pipelines: PIL, numpy and torch to ``(B, C, H, W)`` tensors and back.

Every pipeline speaks one convention at its edges: pixel values in ``[0, 1]`` (floats) or
``0..255`` (``uint8`` arrays and PIL images). Tensors are ``(C, H, W)`` or ``(B, C, H, W)``; numpy
arrays are ``(H, W)``, ``(H, W, C)`` or ``(B, H, W, C)``, as PIL and matplotlib lay them out. So
the output of one pipeline (``output_type="np"`` or ``"pt"``) is a valid input of the next.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers.utils import make_image_grid
from einops import rearrange

from unet_diffusion.errors import InputError, InputTypeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")


# ---------------------------------------------------------------------------- files
def load_image(path: str | os.PathLike) -> PIL.Image.Image:
    """Open an image file fully (not lazily), naming the file if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}.")
    try:
        with PIL.Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as err:
        raise InputError(f"cannot read {path} as an image ({err}).") from err


def image_files(path: str | os.PathLike, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """``path`` itself if it is a file ending in one of ``suffixes``, else the folder's files ending in them, sorted by name."""
    path = Path(path)
    kind = "image" if suffixes == IMAGE_SUFFIXES else "/".join(suffixes)
    if path.is_file():
        if path.suffix.lower() not in suffixes:
            raise InputError(f"{path} is not an {kind} file: expected a name ending in {', '.join(suffixes)}"
                             + (" (a .npy array is read by 1D and 3D models)" if path.suffix.lower() == ".npy" else "")
                             + "; pass such a file, or a folder of them.")
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither an {kind} file nor a folder.")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise FileNotFoundError(f"{path} has no {kind} files (looked for {', '.join(suffixes)}).")
    return files


def load_array(path: str | os.PathLike) -> np.ndarray:
    """A NumPy ``.npy`` array (a signal or a volume), never unpickled, naming the file if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no array file at {path}.")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {path} as a NumPy array ({err}).") from err


# ---------------------------------------------------------------------------- to tensors
def _pil_to_array(image: PIL.Image.Image, channels: int | None) -> np.ndarray:
    if image.mode.startswith("I") or image.mode == "F":
        # 16-bit and float grayscale (microscopy TIFFs): converting to "L" would clip at 255.
        array = np.asarray(image).astype(np.float32)
        return array / 65535.0 if image.mode.startswith("I") else array
    if channels == 1:
        image = image.convert("L")
    elif channels == 3 or image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGB")
    return np.asarray(image)


def _one_to_tensor(image, channels: int | None, name: str) -> torch.Tensor:
    """One image (or a batch, for arrays and tensors) as a float ``(B, C, H, W)`` tensor in [0, 1]."""
    if isinstance(image, PIL.Image.Image):
        image = _pil_to_array(image, channels)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4:
            raise InputError(f"{name}: a numpy image must be (H, W), (H, W, C) or (B, H, W, C); got shape {image.shape}.")
        if image.dtype == np.bool_:
            image = image.astype(np.float32)
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        if image.dtype not in (np.uint8, np.float16, np.float32, np.float64, np.bool_):
            raise InputTypeError(f"{name}: numpy images must be uint8 (0..255) or float (0..1); got dtype {image.dtype}.")
        tensor = torch.from_numpy(np.array(image, dtype=np.float32)) / scale  # a copy: PIL arrays are read-only
        return rearrange(tensor, "b h w c -> b c h w")
    if isinstance(image, torch.Tensor):
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4:
            raise InputError(f"{name}: a tensor image must be (C, H, W) or (B, C, H, W); got shape {tuple(image.shape)}.")
        if image.dtype == torch.uint8:
            return image.float() / 255.0
        if image.dtype == torch.bool:
            return image.float()
        if not image.is_floating_point():
            raise InputTypeError(f"{name}: tensor images must be uint8 (0..255) or float (0..1); got dtype {image.dtype}.")
        return image.float()
    raise InputTypeError(f"{name}: expected a PIL image, a numpy array or a torch tensor; got {type(image).__name__}.")


def to_tensor(images, channels: int | None = None, name: str = "image") -> torch.Tensor:
    """PIL image(s), numpy array(s) or tensor(s) as one float ``(B, C, H, W)`` tensor in [0, 1].

    Args:
        images: one image, a batch (array / tensor), or a list of them, all of one size.
        channels: the channels wanted; PIL images are converted (``"L"`` or ``"RGB"``), other inputs
            must already have them. ``None`` keeps what is given.
        name: the argument name used in error messages.
    """
    parts = images if isinstance(images, (list, tuple)) else [images]
    if not parts:
        raise InputError(f"{name}: got an empty list of images.")
    tensors = [_one_to_tensor(image, channels, name) for image in parts]
    sizes = {tuple(t.shape[1:]) for t in tensors}
    if len(sizes) > 1:
        raise InputError(f"{name}: the images of a batch must share one (C, H, W) shape; got {sorted(sizes)}.")
    batch = torch.cat(tensors)
    if channels is not None and batch.shape[1] != channels:
        raise InputError(f"{name}: expected {channels}-channel images; got {batch.shape[1]} channels (shape {tuple(batch.shape)}).")
    return batch


def to_image_list(images) -> list:
    """Split an input into single images (a list stays a list; arrays / tensors split on the batch axis)."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images)
    return [images]


def to_arrays(arrays, dims: int, channels: int, name: str = "images") -> list[torch.Tensor]:
    """Signals (``dims=1``) or volumes (``dims=3``) as float ``(1, C, ...)`` tensors, one per item.

    ``arrays``: a numpy array or tensor, or a list of them. An item has ``dims`` axes (one channel) or a
    leading channel axis first (``(C, D, H, W)``); one array with ``dims + 2`` axes is a batch. uint8 values
    are scaled to [0, 1], floats are taken as they are (the pipeline's ``image_mean`` / ``image_std`` apply).
    """
    shapes = {1: "(L,) or (C, L)", 3: "(D, H, W) or (C, D, H, W)"}.get(dims, f"{dims} axes")
    items = list(arrays) if isinstance(arrays, (list, tuple)) else [arrays]
    tensors = []
    for item in items:
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(np.array(item, dtype=np.float32) / (255.0 if item.dtype == np.uint8 else 1.0))
        elif isinstance(item, torch.Tensor):
            item = item.float() / 255.0 if item.dtype == torch.uint8 else item.float()
        else:
            raise InputTypeError(f"{name}: a {dims}D model takes numpy arrays or tensors {shapes}; got {type(item).__name__}.")
        if item.ndim == dims + 2:
            tensors += [one[None] for one in item]
            continue
        if item.ndim not in (dims, dims + 1):
            raise InputError(f"{name}: a {dims}D model takes arrays of shape {shapes} (or a batch with a batch axis first); "
                             f"got shape {tuple(item.shape)}.")
        tensors.append((item[None] if item.ndim == dims else item)[None])
    for tensor in tensors:
        if tensor.shape[1] != channels:
            raise InputError(f"{name}: expected {channels}-channel input; got shape {tuple(tensor.shape[1:])} ({tensor.shape[1]} channels).")
    return tensors


# ---------------------------------------------------------------------------- from tensors
def to_pil(images: torch.Tensor) -> list[PIL.Image.Image]:
    """A float ``(B, C, H, W)`` tensor in [0, 1] with 1 or 3 channels as PIL images (``"L"`` / ``"RGB"``)."""
    if images.shape[1] not in (1, 3):
        raise InputError(
            f"PIL output needs 1- or 3-channel images; these have {images.shape[1]} channels. "
            "Use output_type='np' or 'pt' (or 'latent' for the raw sample)."
        )
    array = (rearrange(images, "b c h w -> b h w c").float().cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)
    return [PIL.Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a) for a in array]


def make_grid(images: list[PIL.Image.Image], columns: int | None = None) -> PIL.Image.Image:
    """Tile same-sized PIL images into one picture, row by row (a square-ish grid by default, the last row
    filled with black), in the images' mode; diffusers' ``make_image_grid`` lays them out."""
    if not images:
        raise InputError("make_grid needs at least one image.")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    blanks = [PIL.Image.new(images[0].mode, images[0].size)] * (rows * columns - len(images))
    return make_image_grid([*images, *blanks], rows, columns).convert(images[0].mode)


# ---------------------------------------------------------------------------- masks
# Overlay colours for classes 1, 2, ... (RGB in [0, 1]), of the command's overlays and the training pictures;
# class 0 is taken as background and left uncoloured.
PALETTE = torch.tensor(
    [(230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180), (70, 240, 240), (245, 130, 48), (240, 50, 230)],
    dtype=torch.float32,
) / 255


def mask_to_pil(mask: np.ndarray, num_classes: int, spread: bool = True) -> PIL.Image.Image:
    """An ``(H, W)`` class map as a grayscale PNG-ready image.

    ``spread=True`` maps class k to ``round(k * 255 / (K - 1))``, so a two-class mask is black and
    white rather than black and nearly black; ``spread=False`` writes the class indices themselves.
    """
    mask = np.asarray(mask)
    if num_classes > 256 and not spread:
        raise InputError(f"{num_classes} classes do not fit 8-bit PNG values; use spread values.")
    values = np.round(mask * (255 / max(num_classes - 1, 1))) if spread else mask
    return PIL.Image.fromarray(values.astype(np.uint8))  # 2-D uint8: mode "L"


def probability_to_pil(probability: np.ndarray) -> PIL.Image.Image:
    """An ``(H, W)`` probability map as a 16-bit grayscale PNG-ready image: 0..65535 for 0..1.

    Rounding costs at most 1/131070; ``load_image`` and the pipelines read such a file back as
    floats in [0, 1].
    """
    values = np.round(np.clip(np.asarray(probability, dtype=np.float64), 0, 1) * 65535)
    return PIL.Image.fromarray(values.astype(np.uint16))  # 2-D uint16: mode "I;16"


def tint(rgb: torch.Tensor, mask: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """``(3, H, W)`` pixels in [0, 1] with classes 1, 2, ... of the ``(H, W)`` class map ``mask`` tinted in the palette colours."""
    if tuple(mask.shape) != tuple(rgb.shape[1:]):
        raise InputError(f"the mask is {tuple(mask.shape)} but the image is {tuple(rgb.shape[1:])} (H, W).")
    mask = mask.to(rgb.device).long()
    colours = rearrange(PALETTE.to(rgb)[(mask - 1) % len(PALETTE)], "h w c -> c h w")
    return torch.where(mask > 0, (1 - alpha) * rgb + alpha * colours, rgb)


def overlay(image: PIL.Image.Image, mask: np.ndarray, alpha: float = 0.5) -> PIL.Image.Image:
    """``image`` (RGB) with classes 1, 2, ... of ``mask`` tinted in the palette colours."""
    rgb = to_tensor(image.convert("RGB"))[0]
    return to_pil(tint(rgb, torch.as_tensor(np.asarray(mask)), alpha)[None])[0]
