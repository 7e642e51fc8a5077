"""Tiled inference: run a network on images larger than what it takes in one piece.

Two strategies, each a function of a ``predict`` callable ``(N, C, h, w) -> (N, K, h', w')``:

- ``overlap_tile`` for valid-padding networks (Ronneberger et al. 2015): the image is
  mirror-extrapolated by the network's margin, and input tiles overlap so that the output tiles fit
  edge to edge, each output pixel computed with its full context. Tiles start on multiples of the
  network's downsampling factor, so the result equals one forward over the whole mirrored image.
- ``sliding_window`` for same-padding networks: overlapping tiles whose outputs are blended with
  weights that fall off towards each tile's edges, where the padding makes predictions worse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from unet_diffusion.errors import InputError

Predict = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[Iterable], Iterable]  # wraps the loop over tile batches, e.g. a tqdm bar
Size = tuple[int, int]  # (h, w)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Starts of ``tile``-long windows every ``stride`` that cover ``[0, length)``; the last one ends at ``length``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def mirror_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Mirror-extrapolate ``(B, C, H, W)`` or ``(C, H, W)`` by any amount (reflecting again when a pad exceeds the image).

    The one mirror padding of the project: the pipelines' tiles and the training crops use it.
    """
    if min(x.shape[-2:]) < 2:
        return F.pad(x, (left, right, top, bottom), mode="replicate")  # nothing to reflect
    while top or bottom or left or right:
        h, w = x.shape[-2:]
        step = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = left - step[0], right - step[1], top - step[2], bottom - step[3]
    return x


def _run_tiles(predict: Predict, image: torch.Tensor, positions: list[Size], tile: Size, tiles_per_batch: int,
               progress: Progress | None) -> list[torch.Tensor]:
    """``predict`` over the ``tile``-sized windows of ``(B, C, H, W)`` images at ``positions``, several windows per call."""
    windows = [image[:, :, y : y + tile[0], x : x + tile[1]] for y, x in positions]
    outputs: list[torch.Tensor] = []
    starts = range(0, len(windows), tiles_per_batch)
    for i in progress(starts) if progress is not None and len(starts) > 1 else starts:
        chunk = windows[i : i + tiles_per_batch]
        outputs.extend(predict(torch.cat(chunk)).split(chunk[0].shape[0]))
    return outputs


def overlap_tile_grid(size: Size, tile: Size, out: Size, stride_multiple: int = 1) -> tuple[list[Size], Size]:
    """Where the output tiles of ``overlap_tile`` go: their ``(y, x)`` corners and the ``(h, w)``
    canvas they cover (at least ``size``; the image is mirrored out to it)."""
    strides, canvas = [], []
    for side, t, o in zip(size, tile, out):
        if (t - o) % 2:
            raise InputError(f"the network crops {t} to {o}, not evenly on both sides; overlap-tiling needs a centred output.")
        stride = max(o // stride_multiple, 1) * stride_multiple if o >= stride_multiple else o
        count = max(math.ceil((side - o) / stride), 0) + 1
        strides.append(stride)
        canvas.append((count - 1) * stride + o)
    ys, xs = (range(0, c - o + 1, stride) for c, o, stride in zip(canvas, out, strides))
    positions = [(y, x) for y in ys for x in xs]
    return positions, (canvas[0], canvas[1])


def overlap_tile(predict: Predict, image: torch.Tensor, tile: Size, out: Size, stride_multiple: int = 1,
                 tiles_per_batch: int = 4, progress: Progress | None = None) -> torch.Tensor:
    """Valid-padding inference of any-sized ``(B, C, H, W)`` images; returns ``(B, K, H, W)``.

    Args:
        predict: the network; maps ``tile``-sized inputs to ``out``-sized outputs (centred).
        image: the images.
        tile: the input tile ``(h, w)``, a size the network takes.
        out: the network's output size for ``tile``.
        stride_multiple: output tiles start on multiples of this (the network's downsampling
            factor), so every tile sees the same pooling grid as one whole-image forward.
        tiles_per_batch: tiles per network call.
        progress: wraps the loop over tile batches (a progress bar), when there is more than one.
    """
    height, width = image.shape[-2:]
    positions, (ch, cw) = overlap_tile_grid((height, width), tile, out, stride_multiple)
    mh, mw = (tile[0] - out[0]) // 2, (tile[1] - out[1]) // 2
    padded = mirror_pad(image, mh, mh + ch - height, mw, mw + cw - width)
    # Output pixel (y, x) sits at (y + mh, x + mw) of the padded image, so the input window of the
    # output tile at (y, x) starts at (y, x).
    result = None
    for (y, x), tile_out in zip(positions, _run_tiles(predict, padded, positions, tile, tiles_per_batch, progress)):
        if result is None:
            result = tile_out.new_zeros(image.shape[0], tile_out.shape[1], ch, cw)
        result[:, :, y : y + out[0], x : x + out[1]] = tile_out
    return result[:, :, :height, :width]


def blend_weights(size: int, ramp: int) -> torch.Tensor:
    """1-D weights rising linearly over ``ramp`` pixels from each end, positive everywhere."""
    i = torch.arange(size, dtype=torch.float32)
    return (torch.minimum(i + 1, size - i) / max(ramp, 1)).clamp(max=1.0)


def sliding_window(predict: Predict, image: torch.Tensor, tile: Size, overlap: Size, tiles_per_batch: int = 4,
                   progress: Progress | None = None) -> torch.Tensor:
    """Same-padding inference of ``(B, C, H, W)`` images no smaller than ``tile``; returns ``(B, K, H, W)``.

    Windows of size ``tile`` step by ``tile - overlap``; where they overlap, outputs are averaged
    with weights that ramp down over ``overlap`` pixels towards each window's edges.
    """
    height, width = image.shape[-2:]
    if height < tile[0] or width < tile[1]:
        raise InputError(f"sliding_window needs images at least as large as the tile {tile}; got {height} x {width}.")
    ys = tile_starts(height, tile[0], max(tile[0] - overlap[0], 1))
    xs = tile_starts(width, tile[1], max(tile[1] - overlap[1], 1))
    positions = [(y, x) for y in ys for x in xs]
    result = total = weight = None
    for (y, x), tile_out in zip(positions, _run_tiles(predict, image, positions, tile, tiles_per_batch, progress)):
        if result is None:
            weight = torch.outer(blend_weights(tile[0], overlap[0]), blend_weights(tile[1], overlap[1])).to(tile_out)
            result = tile_out.new_zeros(image.shape[0], tile_out.shape[1], height, width)
            total = tile_out.new_zeros(height, width)
        result[:, :, y : y + tile[0], x : x + tile[1]] += weight * tile_out
        total[y : y + tile[0], x : x + tile[1]] += weight
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
    """One forward over whole ``(B, C, H, W)`` images, mirror-padded to the smallest input whose output covers them
    (by the valid-padding margin on the top and left, so output pixel (0, 0) is image pixel (0, 0)); ``(B, K, H, W)``."""
    tile = tuple(covering_input(unet, side) for side in image.shape[-2:])
    return overlap_tile(predict, image, tile, unet.output_size(tile), unet.downsampling_factor)
