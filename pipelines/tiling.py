"""Tiled inference: run a network on images larger than what it takes in one piece.

Two strategies, each a function of a ``predict`` callable ``(N, C, h, w) -> (N, K, h', w')`` (or with one or
three spatial axes: signals ``(N, C, l)`` and volumes ``(N, C, d, h, w)`` tile the same way, along every axis):

- ``overlap_tile`` for valid-padding networks (Ronneberger et al. 2015): the image is
  mirror-extrapolated by the network's margin, and input tiles overlap so that the output tiles fit
  edge to edge, each output pixel computed with its full context. Tiles start on multiples of the
  network's downsampling factor, so the result equals one forward over the whole mirrored image.
- ``sliding_window`` for same-padding networks: overlapping tiles whose outputs are blended with
  weights that fall off towards each tile's edges, where the padding makes predictions worse.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence

import torch

from unet_diffusion.errors import InputError

Predict = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[Iterable], Iterable]  # wraps the loop over tile batches, e.g. a tqdm bar
Size = tuple[int, ...]  # one side per spatial axis: (h, w), (l,) or (d, h, w)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Starts of ``tile``-long windows every ``stride`` that cover ``[0, length)``; the last one ends at ``length``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def mirror_pad(x: torch.Tensor, before: Sequence[int], after: Sequence[int]) -> torch.Tensor:
    """Mirror-extrapolate the last ``len(before)`` axes of ``x`` by ``before`` / ``after`` positions each, any amount
    (reflecting again where a pad exceeds the axis; a 1-long axis is repeated).

    ``mirror_pad(image, (top, left), (bottom, right))`` for ``(B, C, H, W)`` or ``(C, H, W)`` images; three
    sides for volumes. The one mirror padding of the project: the pipelines' tiles and the training crops use it.
    """
    first = x.ndim - len(before)
    for axis, ahead, behind in zip(range(first, x.ndim), before, after):
        if ahead or behind:
            x = x.index_select(axis, _mirrored_positions(x.shape[axis], ahead, behind, x.device))
    return x


def _mirrored_positions(n: int, before: int, after: int, device) -> torch.Tensor:
    """Which of ``n`` positions each of ``before + n + after`` mirror-extrapolated positions copies (period 2(n - 1))."""
    positions = torch.arange(-before, n + after, device=device)
    if n < 2:
        return torch.zeros_like(positions)
    period = 2 * (n - 1)
    folded = positions.remainder(period)
    return torch.where(folded < n, folded, period - folded)


def _window(corner: Size, tile: Size) -> tuple[slice, ...]:
    """The index of the ``tile``-sized window at ``corner`` of a ``(B, C, ...)`` tensor."""
    return (slice(None), slice(None), *(slice(start, start + side) for start, side in zip(corner, tile)))


def _run_tiles(predict: Predict, image: torch.Tensor, positions: list[Size], tile: Size, tiles_per_batch: int,
               progress: Progress | None) -> list[torch.Tensor]:
    """``predict`` over the ``tile``-sized windows of ``(B, C, ...)`` images at ``positions``, several windows per call."""
    windows = [image[_window(corner, tile)] for corner in positions]
    outputs: list[torch.Tensor] = []
    starts = range(0, len(windows), tiles_per_batch)
    for i in progress(starts) if progress is not None and len(starts) > 1 else starts:
        chunk = windows[i : i + tiles_per_batch]
        outputs.extend(predict(torch.cat(chunk)).split(chunk[0].shape[0]))
    return outputs


def overlap_tile_grid(size: Size, tile: Size, out: Size, stride_multiple: int = 1) -> tuple[list[Size], Size]:
    """Where the output tiles of ``overlap_tile`` go: their corners (``(y, x)`` in 2D) and the canvas
    they cover (at least ``size``; the image is mirrored out to it)."""
    strides, canvas = [], []
    for side, t, o in zip(size, tile, out):
        if (t - o) % 2:
            raise InputError(f"the network crops {t} to {o}, not evenly on both sides; overlap-tiling needs a centred output.")
        stride = max(o // stride_multiple, 1) * stride_multiple if o >= stride_multiple else o
        count = max(math.ceil((side - o) / stride), 0) + 1
        strides.append(stride)
        canvas.append((count - 1) * stride + o)
    starts = (range(0, c - o + 1, stride) for c, o, stride in zip(canvas, out, strides))
    return list(itertools.product(*starts)), tuple(canvas)


def overlap_tile(predict: Predict, image: torch.Tensor, tile: Size, out: Size, stride_multiple: int = 1,
                 tiles_per_batch: int = 4, progress: Progress | None = None) -> torch.Tensor:
    """Valid-padding inference of any-sized ``(B, C, H, W)`` images (or signals, volumes); returns ``(B, K, H, W)``.

    Args:
        predict: the network; maps ``tile``-sized inputs to ``out``-sized outputs (centred).
        image: the images.
        tile: the input tile ``(h, w)`` (one side per axis), a size the network takes.
        out: the network's output size for ``tile``.
        stride_multiple: output tiles start on multiples of this (the network's downsampling
            factor), so every tile sees the same pooling grid as one whole-image forward.
        tiles_per_batch: tiles per network call.
        progress: wraps the loop over tile batches (a progress bar), when there is more than one.
    """
    sides = tuple(image.shape[2:])
    positions, canvas = overlap_tile_grid(sides, tile, out, stride_multiple)
    margins = [(t - o) // 2 for t, o in zip(tile, out)]
    padded = mirror_pad(image, margins, [m + c - side for m, c, side in zip(margins, canvas, sides)])
    # Output pixel (y, x) sits at (y + margin, x + margin) of the padded image, so the input window of
    # the output tile at (y, x) starts at (y, x).
    result = None
    for corner, tile_out in zip(positions, _run_tiles(predict, padded, positions, tile, tiles_per_batch, progress)):
        if result is None:
            result = tile_out.new_zeros(image.shape[0], tile_out.shape[1], *canvas)
        result[_window(corner, out)] = tile_out
    return result[_window((0,) * len(sides), sides)]


BLENDS = ("ramp", "gaussian", "uniform")
GAUSSIAN_SIGMA = 1 / 8  # of the tile side, as nnU-Net weighs its sliding windows


def blend_weights(size: int, ramp: int, blend: str = "ramp") -> torch.Tensor:
    """1-D weights of one window side, positive everywhere: ``"ramp"`` rises linearly over ``ramp`` pixels from each
    end, ``"gaussian"`` falls off from the centre with a standard deviation of 1/8 of the side, ``"uniform"`` is flat."""
    i = torch.arange(size, dtype=torch.float32)
    if blend == "gaussian":
        weight = torch.exp(-0.5 * ((i - (size - 1) / 2) / (GAUSSIAN_SIGMA * size)) ** 2)
        return weight.clamp_min(weight.max() * 1e-3)  # the edges still count where no other window reaches
    if blend == "uniform":
        return torch.ones(size)
    return (torch.minimum(i + 1, size - i) / max(ramp, 1)).clamp(max=1.0)


def check_blend(blend: str) -> None:
    """``blend`` is one of ``BLENDS``."""
    if blend not in BLENDS:
        raise InputError(f"blend must be one of {', '.join(map(repr, BLENDS))}; got {blend!r}.")


def tile_weights(tile: Size, overlap: Size, blend: str = "ramp") -> torch.Tensor:
    """The blending weights of one window: the product of each axis's ``blend_weights``."""
    check_blend(blend)
    weight = blend_weights(tile[0], overlap[0], blend)
    for side, ramp in zip(tile[1:], overlap[1:]):
        weight = weight[..., None] * blend_weights(side, ramp, blend)
    return weight


def sliding_window(predict: Predict, image: torch.Tensor, tile: Size, overlap: Size, tiles_per_batch: int = 4,
                   progress: Progress | None = None, blend: str = "ramp") -> torch.Tensor:
    """Same-padding inference of ``(B, C, H, W)`` images (or signals, volumes) no smaller than ``tile``; returns
    ``(B, K, H, W)``.

    Windows of size ``tile`` step by ``tile - overlap`` along each axis; where they overlap, outputs are
    averaged with weights that ramp down over ``overlap`` positions towards each window's edges (``blend="ramp"``),
    fall off as a Gaussian from each window's centre (``"gaussian"``), or are equal (``"uniform"``).
    """
    sides = tuple(image.shape[2:])
    if any(side < t for side, t in zip(sides, tile)):
        raise InputError(f"sliding_window needs inputs at least as large as the tile {tile}; got {' x '.join(map(str, sides))}.")
    starts = (tile_starts(side, t, max(t - o, 1)) for side, t, o in zip(sides, tile, overlap))
    positions = list(itertools.product(*starts))
    result = total = weight = None
    for corner, tile_out in zip(positions, _run_tiles(predict, image, positions, tile, tiles_per_batch, progress)):
        if result is None:
            weight = tile_weights(tile, overlap, blend).to(tile_out)
            result = tile_out.new_zeros(image.shape[0], tile_out.shape[1], *sides)
            total = tile_out.new_zeros(sides)
        result[_window(corner, tile)] += weight * tile_out
        total[_window(corner, tile)[2:]] += weight
    return result / total


def covering_input(unet, side: int) -> int:
    """The smallest input side ``unet`` takes whose output side is at least ``side``."""
    if unet.config.padding == "same":
        f = 1 if unet.config.pad_input else unet.downsampling_factor
        return -(-side // f) * f
    probe = unet.valid_input_sizes(side + 200, count=1)[0]
    shrink = probe - unet.output_size(probe)  # valid convolutions take the same margin at any valid size
    return next(n for n in unet.valid_input_sizes(side + shrink, count=16) if n - shrink >= side)


def whole_image(predict: Predict, unet, image: torch.Tensor) -> torch.Tensor:
    """One forward over whole ``(B, C, H, W)`` images (or signals, volumes), mirror-padded to the smallest input whose
    output covers them (by the valid-padding margin on the top and left, so output pixel (0, 0) is image pixel (0, 0));
    ``(B, K, H, W)``."""
    tile = tuple(covering_input(unet, side) for side in image.shape[2:])
    return overlap_tile(predict, image, tile, unet.output_size(tile), unet.downsampling_factor)
