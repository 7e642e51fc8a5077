"""Segmentation quality on the ISBI 2012 EM membranes at equal training wall time: our U-Net (the
config's network) against segmentation-models-pytorch's U-Net, both trained by our loop.

    UNET_DATA_DIR=/work/shared/data python -m bench.quality_seg --quick --threads 1   # smoke test, 1-1.5 minutes
    UNET_DATA_DIR=/work/shared/data python -m bench.quality_seg --threads 1          # 15 training minutes per method
    UNET_DATA_DIR=/data python -m bench.quality_seg --device cuda --minutes 30 --set train.mixed_precision=bf16

Everything about the training comes from ``--config`` (default ``configs/isbi2012.yaml``: network,
crop, batch, loss, weight map, augmentation, optimizer, schedule), with ``--set key=value`` overrides
applied for every method. The benchmark itself sets only what it controls: the time budget and step cap,
the output folder, the seed, the training set, and no mid-run evaluation, checkpoints or pictures.

- **Split**: pairs 20-24 (the last five files by name) are held out, the first 20 train every method
  (``data.limit=20``, ``data.val_size=0``, so the loop never sees the held-out five).
- **Equal wall time** (``bench.equal_time`` holds the rule): each method's run gets
  ``train.budget_minutes`` = ``--minutes``; the loop times its steps and plans the run's length as it
  goes, so the config's learning-rate schedule (its own warm-up) ends with the budget, which is also
  the hard stop. Training runs in two invocations: the first stops at half the budget
  (``train.max_minutes``), the second resumes its checkpoint and trains to the end; the model is
  scored after each: two points per method. Minutes are the training loop's own clock, as the
  checkpoint records it; scoring, checkpoints and set-up are left out. The boundary weight maps (when
  the config uses them) are computed once, before any timing, and shared.
- **ours**: ``train.train`` on the config. **smp**: ``segmentation_models_pytorch.Unet``
  (``--smp-encoder``, random initialisation: nothing is downloaded) through the same loop, data,
  augmentation, loss and optimizer (``bench.smp_unet``). It takes sides that are multiples of 32,
  so its crop is the config's rounded down to one (388 -> 384; the run says so).
- **Scoring**, identical for every method: the 5 held-out 512x512 images go whole through
  ``SegmentationPipeline`` (ours: the run's saved pipeline folder, overlap-tile for valid padding;
  smp: the same pipeline class around the saved network), and the masks (argmax) are compared with the
  labels: **pixel error** (fraction of wrong pixels), **Rand error** (foreground-restricted, the ISBI
  2012 metric, ``bench.metrics.rand_error``: cells are the 4-connected components of the object class,
  ``segmentation.object_class``), **Rand error (watershed)** (the same, with the cells the pipeline labels
  one by one, ``instances=object_class``: a seeded watershed over p(cell), so that a gap in a membrane does
  not merge two cells), **membrane Dice** (of the other class). Means over the 5 images.

``--quick`` runs a smoke test: the config's network at 1/8 of its channels, crops near 100 pixels,
smp with a resnet18 encoder, 0.1 minutes per method; its numbers say the pipeline works, not what the
networks reach. The paper's figures (pixel error 0.0611, Rand error 0.0382) are on the challenge's 30
test slices after long GPU training with rotation averaging: a row for reference, not a like-for-like
comparison. Writes the JSON (``--out``, default ``bench/results/quality_seg.json``, ``quality_seg_quick``
with ``--quick``), and beside it ``<name>_overlay_<method>.png`` (image | truth | prediction of the
first held-out image) and ``<name>_curve.png`` (pixel and Rand error against training minutes; needs
matplotlib). ``--device`` says where scoring runs; training runs where Accelerate puts it (a GPU when
there is one; ``CUDA_VISIBLE_DEVICES=`` keeps it on the CPU).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.common import PROJECT_ROOT, Bench, describe, pyplot, quiet_progress_bars, run_bench, save_figure, save_grid
from bench.equal_time import HALVES, add_options, budget_minutes, budget_overrides, quiet, train_in_halves
from bench.metrics import cell_components, dice, pixel_error, rand_error
from bench.smp_unet import SmpTask, load_smp_pipeline, smp_available, smp_crop
from pipelines import SegmentationPipeline
from train import load_config, train
from train.data import open_source
from train.diffusion import build_unet
from train.loop import read_log
from train.segmentation import SegmentationTask, input_size_for, overlay
from unet_diffusion.inputs import model_dims

CONFIG = PROJECT_ROOT / "configs" / "isbi2012.yaml"
SCORE_COLUMNS = ["pixel error", "Rand error", "Rand error (watershed)", "membrane Dice"]  # their table columns
SCORES = ("pixel_error", "rand_error", "rand_error_watershed", "membrane_dice")  # the means of a table row
PAPER = {"pixel_error": 0.0611, "rand_error": 0.0382}   # Ronneberger et al. 2015, ISBI 2012 test set
METHODS = ("ours", "smp")
PAIRS, TRAINING = 25, 20                                 # the ISBI 2012 pairs; the first 20 by name train
QUICK = dict(channel_divisor=8, crop=100, smp_encoder="resnet18")
# Keys the benchmark sets itself (run_overrides); --set may not change them.
CONTROLLED = ("train.budget_minutes", "train.steps", "train.max_minutes", "train.output_dir", "train.seed", "train.eval_every",
              "train.checkpoint_every", "train.log_every", "train.progress_bar", "train.cpu_threads",
              "segmentation.overlay_every", "segmentation.num_overlays", "data.limit", "data.val_size")


# ---------------------------------------------------------------------------- pure helpers
def check_sets(sets: list[str]) -> None:
    """Refuse ``--set`` overrides of what the benchmark controls."""
    for item in sets:
        key = item.split("=", 1)[0].strip()
        if key in CONTROLLED:
            raise ValueError(f"--set {item}: the benchmark sets {key} itself (use --minutes, --seed, --threads or --keep-run).")


def fixed_split(count: int) -> tuple[list[int], list[int]]:
    """Training and held-out example indices: the first 20 pairs by name, and the last 5."""
    if count != PAIRS:
        raise ValueError(f"expected the {PAIRS} ISBI 2012 image/label pairs; the config's data has {count}.")
    return list(range(TRAINING)), list(range(TRAINING, PAIRS))


def run_overrides(run_dir: Path, minutes: float, resume: str | None, seed: int, threads: int | None) -> list[str]:
    """What the benchmark sets on top of the config for one training invocation (the keys of CONTROLLED):
    the budget of ``minutes`` (the first invocation, ``resume`` None, stops at half of it)."""
    items = [*budget_overrides(minutes, resume), f"train.output_dir={run_dir}", f"train.seed={seed}", "train.eval_every=0",
             "train.checkpoint_every=0", "train.log_every=1", "train.progress_bar=false",
             "segmentation.overlay_every=0", "segmentation.num_overlays=0",
             f"data.limit={TRAINING}", "data.val_size=0"]
    if threads:
        items.append(f"train.cpu_threads={threads}")
    return items


def shrunk_channels(channels, divisor: int) -> list[int]:
    """Channels divided by ``divisor`` (at least 1 each)."""
    return [max(int(c) // divisor, 1) for c in channels]


def segmentation_scores(truth: np.ndarray, pred: np.ndarray, cell: int, cells: np.ndarray) -> dict:
    """Pixel error, Rand error (cells: connected components of class ``cell``; and ``cells``, the pipeline's
    watershed instances) and Dice of the other class."""
    true_cells = cell_components(truth == cell)
    return dict(
        pixel_error=pixel_error(truth, pred),
        rand_error=rand_error(true_cells, cell_components(pred == cell)),
        rand_error_watershed=rand_error(true_cells, cells),
        membrane_dice=dice(truth != cell, pred != cell),
        membrane_fraction_true=float(np.mean(truth != cell)),
        membrane_fraction_pred=float(np.mean(pred != cell)),
    )


# ---------------------------------------------------------------------------- config
def meta_unet(config):
    """The config's network without weights: its sizes and config only."""
    with torch.device("meta"):
        return build_unet(config, in_channels=config.data.channels)


def nearest_crop(config, target: int) -> int:
    """The label crop side nearest to ``target``, not above the config's, that the config's network takes."""
    model = meta_unet(config)
    for side in sorted(range(max(1, target - 64), target + 65), key=lambda s: (abs(s - target), s)):
        if side > config.data.image_size:
            continue
        try:
            input_size_for(model, side)
            return side
        except ValueError:
            continue
    raise ValueError(f"--quick found no crop near {target} pixels for the config's network; pass --set data.image_size=N.")


def quick_overrides(path: Path, sets: list[str]) -> list[str]:
    """``--quick``: the config's network at 1/8 of its channels and a crop near 100 pixels."""
    config = load_config(path, sets)
    channels = shrunk_channels(meta_unet(config).config.channels, QUICK["channel_divisor"])
    # GroupNorm must still divide the narrower levels; try the network as is, then with fewer groups.
    for extra in ([], [f"model.args.norm_groups={math.gcd(*channels)}"]):
        items = [f"model.args.channels={channels}", *extra]
        try:
            shrunk = load_config(path, [*items, *sets])
            meta_unet(shrunk)
            break
        except ValueError:
            continue
    else:
        raise ValueError("--quick cannot narrow the config's network; pass --set model.args.channels=[...] yourself.")
    return [*items, f"data.image_size={nearest_crop(shrunk, min(QUICK['crop'], shrunk.data.image_size))}"]


# ---------------------------------------------------------------------------- runs
class Method:
    """One contender: how to build its task, where its trained model is, and what to call it."""

    def __init__(self, name: str, config, smp_encoder: str, weight_maps: dict):
        self.name, self.smp_encoder, self.weight_maps = name, smp_encoder, weight_maps
        self.crop = config.data.image_size if name == "ours" else smp_crop(config.data.image_size)
        self.note = None
        if name == "smp" and self.crop != config.data.image_size:
            self.note = (f"smp: the config's crop {config.data.image_size} is not a multiple of 32 (smp's U-Net needs one); "
                         f"smp trains on {self.crop}-pixel crops")
        self.label = "ours" if name == "ours" else f"smp Unet {smp_encoder}"

    def task(self, config) -> SegmentationTask:
        task = SegmentationTask(config) if self.name == "ours" else SmpTask(config, self.smp_encoder, self.crop)
        task._weight_maps = self.weight_maps  # the task caches them per example index; shared, computed before timing
        return task

    def pipeline(self, run_dir: Path, device: torch.device) -> SegmentationPipeline:
        return open_pipeline(run_dir / "pipeline" if self.name == "ours" else load_smp_pipeline(run_dir), device)


@dataclass
class Experiment:
    """What every method shares: the config with the overrides, the data, its split and the weight maps."""

    path: Path                                   # --config
    sets: list[str]                              # --quick's overrides, then --set's
    base: object                                 # the config they give
    source: object                               # the 25 ISBI 2012 pairs
    held_out: list[int]
    names: list[str]                             # file names of the pairs
    weight_maps: dict                            # example index -> boundary weight map (when the config uses them)
    seed: int
    threads: int | None

    @property
    def cell(self) -> int:
        return self.base.segmentation.object_class

    def config(self, run_dir: Path, minutes: float, resume: str | None):
        """The config of one training invocation (``run_overrides`` on top of the shared overrides)."""
        return load_config(self.path, [*self.sets, *run_overrides(run_dir, minutes, resume, self.seed, self.threads)])

    def score(self, pipe: SegmentationPipeline, tta: str | None = None) -> tuple[dict, list[dict], np.ndarray]:
        """Means and per-image scores over the held-out images (whole images through the pipeline), and the first mask.
        A 3D pipeline segments the held-out images stacked into one volume, in order, and is scored slice by slice."""
        raws = [self.source.load(index) for index in self.held_out]
        if model_dims(pipe.unet.config) == 3:
            volume = np.stack([np.asarray(raw.image) for raw in raws])  # (D, H, W)
            out = pipe(volume, tta=tta, instances=self.cell)
            preds, cells = list(np.asarray(out.masks[0])), list(np.asarray(out.instances[0]))  # 3D objects, cut slice by slice
        else:
            outs = [pipe(raw.image, tta=tta, instances=self.cell) for raw in raws]
            preds, cells = [np.asarray(out.masks[0]) for out in outs], [np.asarray(out.instances[0]) for out in outs]
        per_image, first = [], preds[0]
        for index, raw, pred, cell_labels in zip(self.held_out, raws, preds, cells):
            scores = segmentation_scores(raw.mask, pred, self.cell, cell_labels)
            per_image.append(dict(image=Path(self.source.name(index)).name, **scores))
        mean = {key: float(np.mean([r[key] for r in per_image])) for key in SCORES}
        return mean, per_image, first


def prepare(bench: Bench) -> Experiment:
    """Read the config and the data, fix the split and compute the weight maps once, before any timing."""
    args = bench.args
    sets = [*(quick_overrides(args.config, args.sets) if args.quick else []), *args.sets]
    base = load_config(args.config, sets)
    if base.task != "segmentation":
        raise ValueError(f"{args.config} is a {base.task} config; this benchmark needs task: segmentation.")
    source = open_source(base)
    train_idx, held_out = fixed_split(len(source))
    task = SegmentationTask(base)  # checks the config; its class count and object class decide the scores
    if task.num_classes != 2:
        raise ValueError(f"the scores are for two classes (membrane and cell); the config's network has "
                         f"{task.num_classes}.")
    if base.segmentation.weight_map:
        for index in train_idx:
            task.weight_map(source.load(index).mask, index)
    return Experiment(args.config, sets, base, source, held_out, [Path(source.name(i)).name for i in range(len(source))],
                      task._weight_maps, args.seed, args.threads)


def open_pipeline(folder: Path | SegmentationPipeline, device: torch.device) -> SegmentationPipeline:
    """A trained pipeline (a folder, or one already built) on ``device``, without progress bars."""
    pipe = folder if isinstance(folder, SegmentationPipeline) else SegmentationPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def run_method(method: Method, experiment: Experiment, run_dir: Path, minutes: float, device,
               say) -> tuple[dict, np.ndarray]:
    """Train for ``minutes`` in two invocations, scoring after each; what happened, and the last first mask."""

    def invoke(resume: str | None) -> dict:
        config = experiment.config(run_dir, minutes, resume)
        task = method.task(config)
        train(config, resume=resume, task=task, log=quiet)
        if task.trainer.train_examples.indices != list(range(TRAINING)) or task.trainer.val_examples is not None:
            raise RuntimeError(f"the {method.name} run did not train on exactly the first {TRAINING} pairs "
                               "(a bad image skipped?).")
        started = time.perf_counter()
        pipe = method.pipeline(run_dir, device)
        mean, per_image, first = experiment.score(pipe)
        return dict(mean=mean, per_image=per_image, first=first, parameters=pipe.unet.num_parameters(),
                    eval_seconds=time.perf_counter() - started)

    halves, points = train_in_halves(run_dir, invoke), []
    for point, scored, done in halves:
        points.append(dict(point=point, minutes=done.minutes, steps=done.step, planned_steps=done.planned_steps,
                           mean=scored["mean"], per_image=scored["per_image"], eval_seconds=scored["eval_seconds"]))
        say(f"{method.label}, {point}: {done.minutes:.2f} min, {done.step} steps of {done.planned_steps} planned "
            f"({done.seconds_per_step:.3f} s a step), pixel error {scored['mean']['pixel_error']:.4f}, "
            f"Rand error {scored['mean']['rand_error']:.4f}")
    if len(halves) == 1:
        say(f"{method.label}: the planned steps ran out before half the time; no second invocation")
    scored, done = halves[-1][1:]
    losses = [r["loss"] for r in read_log(run_dir) if "loss" in r]
    return dict(method=method.name, label=method.label, parameters=scored["parameters"], crop=method.crop, note=method.note,
                seconds_per_step=done.seconds_per_step, planned_steps=done.planned_steps,
                loss_first=losses[0] if losses else None, loss_last=losses[-1] if losses else None,
                points=points), scored["first"]


def train_methods(bench: Bench, experiment: Experiment, methods: list[str]) -> tuple[list[dict], list[str]]:
    """Train and score each method for the budget; their results and the notes worth printing."""
    args, minutes, name = bench.args, budget_minutes(bench.args), bench.results_name()
    smp_encoder = args.smp_encoder or (QUICK["smp_encoder"] if args.quick else "resnet34")
    clock = time.perf_counter()
    say = lambda text: print(f"[{time.perf_counter() - clock:4.0f} s] {text}", flush=True)
    names, sets = experiment.names, experiment.sets
    say(f"ISBI 2012 membranes, {minutes:g} training minutes per method; {describe(bench.info)}. Config {args.config}"
        + (f" with {' '.join(sets)}" if sets else "") + f". Training: {names[0]}..{names[TRAINING - 1]}; "
        f"held out: {', '.join(names[i] for i in experiment.held_out)}.")
    results, notes = [], []
    with tempfile.TemporaryDirectory(prefix="isbi2012-") as tmp:
        for method_name in methods:
            method = Method(method_name, experiment.base, smp_encoder, experiment.weight_maps)
            if method.note:
                say(f"note: {method.note}.")
                notes.append(method.note)
            run_dir = (args.keep_run or Path(tmp)) / method_name
            result, first = run_method(method, experiment, run_dir, minutes, bench.device, say)
            result["overlay"] = str(bench.results_dir / f"{name}_overlay_{method_name}.png")
            save_overlay(experiment.source, experiment.held_out[0], first, Path(result["overlay"]))
            results.append(result)
    return results, notes


def score_cells(mean: dict) -> dict:
    """The table cells of mean scores."""
    return {"pixel error": f"{mean['pixel_error']:.4f}", "Rand error": f"{mean['rand_error']:.4f}",
            "Rand error (watershed)": f"{mean['rand_error_watershed']:.4f}",
            "membrane Dice": f"{mean['membrane_dice']:.4f}"}


def score_pipelines(bench: Bench, experiment: Experiment) -> None:
    """Score trained pipeline folders on the held-out pairs (no training): a table and JSON."""
    rows, results, tta = [], [], bench.args.tta
    for folder in bench.args.pipelines:
        pipe = open_pipeline(folder, bench.device)
        started = time.perf_counter()
        mean, per_image, _ = experiment.score(pipe, tta)
        results.append(dict(pipeline=str(folder), tta=tta, mean=mean, per_image=per_image, seconds=time.perf_counter() - started))
        rows.append({"pipeline": f"{folder}" + (f" (TTA {tta})" if tta else ""), **score_cells(mean)})
    held_out, name = experiment.held_out, bench.results_name("pipelines" + (f"_tta_{tta}" if tta else ""))
    bench.report(dict(results=results, paper=PAPER), rows, ["pipeline", *SCORE_COLUMNS],
                 f"held out: pairs {held_out[0]}-{held_out[-1]}", name=name)


# ---------------------------------------------------------------------------- pictures and report
def save_overlay(source, index: int, pred: np.ndarray, path: Path) -> None:
    """Image | truth | prediction (classes above 0 tinted), at half size."""
    raw = source.load(index)
    image = torch.from_numpy(np.asarray(raw.image.convert("L"), dtype=np.float32) / 127.5 - 1)[None]  # (1, H, W) in [-1, 1]
    pictures = [(image + 1).expand(3, -1, -1) / 2, overlay(image, torch.from_numpy(raw.mask)),
                overlay(image, torch.from_numpy(pred))]
    grid = torch.nn.functional.interpolate(torch.stack(pictures), scale_factor=0.5, mode="area")
    save_grid(grid, path, nrow=3, padding=4)


def plot_curves(results: list[dict], path: Path) -> Path | None:
    """Pixel error and Rand error against training minutes, a line per method; None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in zip(axes, ("pixel_error", "rand_error"), ("pixel error", "Rand error")):
        for result in results:
            points = result["points"]
            ax.plot([p["minutes"] for p in points], [p["mean"][key] for p in points], marker="o", label=result["label"])
        ax.axhline(PAPER[key], color="gray", linestyle="--", linewidth=1, label="paper (test set)")
        ax.set(xlabel="training minutes", title=f"{title} (5 held-out images)")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return save_figure(fig, path)


def report(bench: Bench, experiment: Experiment, results: list[dict], notes: list[str]) -> None:
    """The JSON, the curve, and the table of every method's points with the paper's row."""
    args, name = bench.args, bench.results_name()
    curve = plot_curves(results, bench.results_dir / f"{name}_curve.png")
    if curve is None:
        notes.append("matplotlib is not installed: no curve picture")
    names = experiment.names
    minutes = budget_minutes(args)
    payload = dict(quick=args.quick, minutes=minutes, config=str(args.config), overrides=experiment.sets,
                   bench_overrides={point: run_overrides(Path("RUN"), minutes, resume, args.seed, args.threads)
                                    for point, resume in HALVES}, seed=args.seed,
                   training=names[:TRAINING], held_out=[names[i] for i in experiment.held_out],
                   results=results, paper=PAPER, curve=str(curve) if curve else None, notes=notes)
    rows = [{"method": f"{r['label']} ({p['point']})", "params": f"{r['parameters'] / 1e6:.2f}M",
             "minutes": f"{p['minutes']:.2f}", "steps": p["steps"], **score_cells(p["mean"])}
            for r in results for p in r["points"]]
    rows.append({"method": "paper (challenge test set, full training, rotation averaging)",
                 "pixel error": f"{PAPER['pixel_error']:.4f}", "Rand error": f"{PAPER['rand_error']:.4f}"})
    lines = ["--quick: narrowed networks and a few seconds of training; the numbers say the benchmark runs end to end."
             ] if args.quick else []
    lines += [f"note: {note}." for note in notes]
    lines.append(f"overlays (image | truth | prediction): {', '.join(r['overlay'] for r in results)}"
                 + (f"; curve: {curve}" if curve else ""))
    bench.report(payload, rows, ["method", "params", "minutes", "steps", *SCORE_COLUMNS], *lines)


# ---------------------------------------------------------------------------- the entry
def options(parser) -> None:
    add_options(parser, CONFIG, METHODS, seed_help="train.seed of every run (default 0)",
                pipelines_help="score these trained pipeline folders (e.g. runs/isbi2012/pipeline) on pairs 20-24 "
                               "instead of training")
    parser.add_argument("--smp-encoder", default=None, help="smp encoder (default resnet34; --quick resnet18)")
    parser.add_argument("--keep-run", type=Path, default=None,
                        help="train into DIR/<method> and keep the runs (default: temporary folders)")
    parser.add_argument("--tta", choices=["flip", "d4"], default=None,
                        help="with --pipelines: test-time augmentation while scoring")


def measure(bench: Bench) -> None:
    args = bench.args
    try:
        check_sets(args.sets)
    except ValueError as err:
        bench.error(str(err))
    if not bench.has_data("isbi2012-membrane/image", "isbi2012-membrane/label",
                          what="the ISBI 2012 data (isbi2012-membrane/: image/ and label/ folders of 25 PNGs each)"):
        return
    quiet_progress_bars()  # no "Loading pipeline components" bars between the lines
    methods = list(args.methods)
    if "smp" in methods and not smp_available():
        print("note: segmentation-models-pytorch is not installed (pip install -e '.[bench]'); skipping smp.")
        methods.remove("smp")
    if not methods:
        return
    experiment = prepare(bench)
    if args.pipelines:
        score_pipelines(bench, experiment)
        return
    results, notes = train_methods(bench, experiment, methods)
    report(bench, experiment, results, notes)


def main(argv=None) -> int:
    return run_bench("quality_seg", __doc__, options, measure, argv, timed=False)


if __name__ == "__main__":
    sys.exit(main())
