"""Shape judge: does a class-conditional shapes denoiser (``configs/quickstart.yaml``, the demo) draw the
shape it is asked for?

    python -m bench.shapes_judge runs/demo/pipeline             # 32 samples per class, as the pipeline samples
    python -m bench.shapes_judge --grid runs/demo/samples.png   # the demo's own sample grid (36 images)
    python -m bench.shapes_judge --check                        # the judge on drawn shapes (no model)
    python -m bench.shapes_judge "demo pipeline=runs/demo/pipeline" --grid "demo grid=runs/demo/samples.png"

Each sample's foreground is the pixels far from its background (the median of its border pixels);
specks under 3 pixels are dropped. The judge fits each of the three outlines the built-in data draws
(``train.data.SyntheticShapes``: a disc, an axis-aligned square, an upward triangle whose half-width
is 0.6 of its depth below the apex) over a grid of centres and sizes, and keeps each outline's best
intersection over union (IoU) with the foreground. A sample is *right* when its foreground is one
piece, the asked shape fits best and its IoU is at least ``MIN_IOU``; a blob that is neither round nor
square, fragments, or the wrong shape are not. The score is the fraction of right samples per class, and their mean over classes.

The judge itself is checked on shapes drawn by the data source (``--check``): real shapes score
100%, the same shapes judged against a shifted label 0%, and blurred blobs low.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from bench.common import Bench, describe, provenance, run_bench

KINDS = ("circle", "square", "triangle")  # class label = index, as train.data.SyntheticShapes draws them
MIN_IOU = 0.7                             # below this even the best-fitting outline leaves a third of the pixels out
FOREGROUND = 0.3                          # a foreground pixel differs from the background by this much (0..1) in a channel
MIN_SPECK = 3                             # foreground components smaller than this (pixels) are noise


# ---------------------------------------------------------------------------- masks and outlines
def foreground(image: np.ndarray) -> np.ndarray:
    """The shape's pixels ``(H, W)`` of an image ``(H, W, C)`` in [0, 1]: far from the border's median colour."""
    border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    distance = np.abs(image - np.median(border, axis=0)).max(axis=-1)
    mask = distance > FOREGROUND
    parts, count = ndimage.label(mask)
    sizes = ndimage.sum(mask, parts, range(1, count + 1))
    return np.isin(parts, 1 + np.flatnonzero(sizes >= MIN_SPECK))


def outlines(kind: str, size: int) -> np.ndarray:
    """Every candidate outline ``(N, size, size)`` of one kind: centres on a half-pixel grid, sizes 1.5..size/2
    pixels in quarter steps, drawn on pixel centres as the data source draws them."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    centres = np.arange(1, size * 2) / 2
    radii = np.arange(6, 2 * size + 1) / 4
    cy, cx, r = (v.reshape(-1, 1, 1) for v in np.meshgrid(centres, centres, radii, indexing="ij"))
    if kind == "circle":
        return (y - cy) ** 2 + (x - cx) ** 2 <= r**2
    if kind == "square":  # r: half the side
        return (np.abs(y - cy) <= r) & (np.abs(x - cx) <= r)
    depth = y - (cy - r)  # an upward triangle 2r deep centred on (cy, cx)
    return (depth >= 0) & (y <= cy + r) & (np.abs(x - cx) <= 0.6 * depth)


_OUTLINES: dict[int, dict[str, torch.Tensor]] = {}


def best_fits(masks: np.ndarray) -> list[dict[str, float]]:
    """The best IoU of each kind's outlines with each mask ``(N, H, W)`` (0 for an empty mask)."""
    n, size = masks.shape[0], masks.shape[1]
    if size not in _OUTLINES:
        _OUTLINES[size] = {kind: torch.from_numpy(outlines(kind, size).reshape(-1, size * size)).float() for kind in KINDS}
    m = torch.from_numpy(masks.reshape(n, -1)).float()  # (N, H*W)
    fits = [{} for _ in range(n)]
    for kind, shapes in _OUTLINES[size].items():  # shapes: (outlines, H*W)
        inter = shapes @ m.T  # (outlines, N) pixels in both
        union = shapes.sum(1, keepdim=True) + m.sum(1) - inter
        best = (inter / union.clamp(min=1)).max(0).values
        for fit, value in zip(fits, best.tolist()):
            fit[kind] = value
    return fits


def judge(images: np.ndarray, labels: list[int]) -> list[dict]:
    """One verdict per image ``(N, H, W, C)`` in [0, 1] asked to show ``KINDS[label]``: the best IoU of each
    kind, the kind that fits best, the foreground's pieces, and whether the sample is right (one piece, the asked
    kind fits best, with IoU >= ``MIN_IOU``)."""
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"expected square images (N, H, W, C); got shape {images.shape}.")
    masks = np.stack([foreground(image) for image in images])
    verdicts = []
    for mask, fits, label in zip(masks, best_fits(masks), labels):
        seen = max(fits, key=fits.get)
        asked = KINDS[label]
        pieces = ndimage.label(mask)[1]
        verdicts.append(dict(asked=asked, seen=seen, iou=fits[asked], fits=fits, pixels=int(mask.sum()), pieces=pieces,
                             right=seen == asked and fits[asked] >= MIN_IOU and pieces == 1))
    return verdicts


def summarize(verdicts: list[dict]) -> dict:
    """Per asked kind: samples, fraction right, mean IoU of the asked shape, and what was seen; the mean over kinds."""
    per_kind = {}
    for kind in KINDS:
        mine = [v for v in verdicts if v["asked"] == kind]
        if mine:
            per_kind[kind] = dict(samples=len(mine), right=sum(v["right"] for v in mine) / len(mine),
                                  mean_iou=float(np.mean([v["iou"] for v in mine])),
                                  seen={k: sum(v["seen"] == k for v in mine) for k in KINDS})
    return dict(per_kind=per_kind, score=float(np.mean([p["right"] for p in per_kind.values()])),
                mean_iou=float(np.mean([p["mean_iou"] for p in per_kind.values()])))


# ---------------------------------------------------------------------------- sources of images
def drawn_shapes(count: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """``count`` examples ``(N, H, W, 3)`` in [0, 1] of the built-in data source and their labels."""
    from train.data import SyntheticShapes

    source = SyntheticShapes(size, count, seed=seed)
    raws = [source.load(i) for i in range(count)]
    return np.stack([np.asarray(r.image, dtype=np.float32) / 255 for r in raws]), [int(r.label) for r in raws]


def blurred(images: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Shapes smeared into blobs: a Gaussian blur over the pixels, each image stretched back to [0, 1]."""
    soft = ndimage.gaussian_filter(images, sigma=(0, sigma, sigma, 0))
    low, high = soft.min(axis=(1, 2, 3), keepdims=True), soft.max(axis=(1, 2, 3), keepdims=True)
    return (soft - low) / np.maximum(high - low, 1e-6)


def read_grid(path: Path, columns: int = 6, size: int = 16) -> tuple[np.ndarray, list[int]]:
    """The samples of a training run's grid (``samples.png`` as ``train.diffusion.save_grid`` writes it: ``columns``
    per row, ``size``-pixel images enlarged ``s`` times, ``2 s`` pixels of padding) as ``(N, size, size, 3)`` in
    [0, 1], and their labels (sample ``i`` asks for ``i % 3``, as training draws them)."""
    from PIL import Image

    grid = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    scale, rest = divmod(grid.shape[1], columns * (size + 2) + 2)
    rows = (grid.shape[0] - 2 * scale) // ((size + 2) * scale) if scale else 0
    if rest or not rows:
        raise ValueError(f"{path}: {grid.shape[1]} pixels wide is not a grid of {columns} columns of {size}-pixel "
                         f"images; pass the run's columns and image size.")
    starts = lambda count: [2 * scale + i * (size + 2) * scale + scale // 2 for i in range(count)]  # a tile's first centre pixel
    images = np.stack([grid[y:y + size * scale:scale, x:x + size * scale:scale] for y in starts(rows) for x in starts(columns)])
    return images, [i % len(KINDS) for i in range(len(images))]


def sample_pipeline(folder: Path, per_class: int, seed: int, device, steps: int | None = None,
                    guidance: float | None = None) -> tuple[np.ndarray, list[int], dict]:
    """``per_class`` samples of each class from a ``DenoisePipeline`` folder, with the sampling settings it stores
    (the demo config's ``diffusion.sampler``, ``sample_steps`` and ``guidance_scale`` for a folder that stores none),
    ``steps`` and ``guidance`` overriding them; and the settings used."""
    from pipelines import DenoisePipeline
    from train.config import load_config

    pipe = DenoisePipeline.from_pretrained(str(folder)).to(device)
    pipe.set_progress_bar_config(disable=True)
    sampler = None
    if not pipe.config.get("sampling"):
        demo = load_config("quickstart").diffusion
        sampler, steps = demo.sampler, steps or demo.sample_steps
        guidance = demo.guidance_scale if guidance is None else guidance
    used = pipe.sampling_settings(sampler, steps, guidance)
    settings = dict(sampler=type(used.scheduler).__name__, steps=used.num_inference_steps, guidance=used.guidance_scale,
                    eta=used.eta, per_class=per_class, seed=seed)
    labels = [i % len(KINDS) for i in range(per_class * len(KINDS))]
    generator = torch.Generator().manual_seed(seed)
    images = pipe(len(labels), sampler=sampler, num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                  class_labels=torch.tensor(labels, device=device), output_type="np").images
    return images, labels, settings


def labelled(text: str) -> tuple[str, Path]:
    """``LABEL=PATH`` or ``PATH``: the name a result is stored under, and the path."""
    label, _, path = text.rpartition("=")
    return label or path, Path(path)


# ---------------------------------------------------------------------------- the benchmark
COLUMNS = ["images", "asked", "samples", "right", "mean IoU", "seen circle / square / triangle"]


def rows_of(name: str, summary: dict) -> list[dict]:
    rows = [{"images": name, "asked": kind, "samples": p["samples"], "right": f"{p['right']:.0%}",
             "mean IoU": f"{p['mean_iou']:.2f}", "seen circle / square / triangle": " / ".join(str(p["seen"][k]) for k in KINDS)}
            for kind, p in summary["per_kind"].items()]
    rows.append({"images": name, "asked": "all", "right": f"{summary['score']:.0%}", "mean IoU": f"{summary['mean_iou']:.2f}"})
    return rows


def options(parser) -> None:
    parser.add_argument("pipelines", nargs="*", metavar="[LABEL=]PIPELINE",
                        help="DenoisePipeline folders of shapes models (runs/demo/pipeline), each optionally named LABEL")
    parser.add_argument("--grid", action="append", default=[], metavar="[LABEL=]PNG", help="a run's samples.png grid (repeatable)")
    parser.add_argument("--check", action="store_true", help="judge drawn shapes, shifted labels and blurred blobs (no model)")
    parser.add_argument("--per-class", type=int, default=32, help="samples per class from a pipeline (--quick: 8)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the pipeline's stored setting)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's stored setting)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=None, help="results name: bench/results/shapes_judge_<NAME>.json")


def measure(bench: Bench) -> None:
    args = bench.args
    if not (args.pipelines or args.grid or args.check):
        bench.error("give a pipeline folder, --grid samples.png or --check.")
    results, rows, sampling = {}, [], {}
    if args.check:
        images, labels = drawn_shapes(96 if args.quick else 600)
        for name, (imgs, labs) in {"drawn": (images, labels),
                                   "drawn, label + 1": (images, [(k + 1) % len(KINDS) for k in labels]),
                                   "drawn, blurred": (blurred(images), labels)}.items():
            results[name] = summarize(judge(imgs, labs))
            rows += rows_of(name, results[name])
    for label, path in map(labelled, args.pipelines):
        images, labels, sampling[label] = sample_pipeline(path, 8 if args.quick else args.per_class, args.seed, bench.device,
                                                          args.steps, args.guidance)
        results[label] = summarize(judge(images, labels))
        rows += rows_of(label, results[label])
    for label, path in map(labelled, args.grid):
        results[label] = summarize(judge(*read_grid(path)))
        rows += rows_of(label, results[label])
    lines = [f"Shape judge: {describe(bench.info)}. right = one piece, the asked shape fits best, IoU >= {MIN_IOU}; "
             f"mean IoU = the asked shape's best fit."]
    lines += [f"{label}: {settings}" for label, settings in sampling.items()]
    name = "_".join(["shapes_judge", *([args.name] if args.name else []), *(["quick"] if args.quick else [])])
    bench.report(dict(**provenance(), min_iou=MIN_IOU, sampling=sampling, results=results), rows, COLUMNS, *lines, name=name)


def main(argv=None) -> int:
    return run_bench("shapes_judge", __doc__, options, measure, argv, timed=False)


if __name__ == "__main__":
    sys.exit(main())
