"""Generation quality on MNIST at equal training time: our U-Net against diffusers' ``UNet2DModel``
and lucidrains' ``denoising-diffusion-pytorch``, each trained for the same wall-clock minutes,
sampled with the same classifier-free guidance and DDIM steps, and scored with a digit classifier.

    UNET_DATA_DIR=/path/to/data OMP_NUM_THREADS=1 python -m bench.quality_gen --quick --threads 1
    UNET_DATA_DIR=/path/to/data python -m bench.quality_gen --minutes 15 --threads 2   # 500 samples: data.val_size >= 1000
    UNET_DATA_DIR=/path/to/data python -m bench.quality_gen --pipelines runs/mnist/pipeline   # score a trained model, no training
    UNET_DATA_DIR=/path/to/data python -m bench.quality_gen --pipelines runs/mnist/pipeline --sampler ddpm --sample-steps 100

``--quick`` trains a quarter-width network (channels 8, 16, 16) with batch 16 for 0.1 minute per
method, trains the classifier one epoch, and scores 50 digits of 4 DDIM steps per point: it checks
that everything runs (about 80 s on one thread), its numbers mean nothing. ``--set
key=value`` overrides ``--config`` (``configs/mnist.yaml``) for every method: our loop reads it, and
the lucidrains loop takes its batch size, optimizer, schedule, EMA and objective from it.

**The split.** ``train.data.split_indices`` with the config's ``data.val_size`` and ``train.seed``:
exactly the split a training run makes. No denoiser and not the classifier ever sees the held-out
digits. The classifier (a small CNN, ``--classifier-epochs``) trains on the training split; two
disjoint real sets R1 and R2 of ``--samples`` digits each come from the held-out ones (so
``data.val_size`` must be at least ``2 * --samples``; the script says so when it is not).

**The methods**, on the same training split, batch size and 28x28 images in [-1, 1]:

- ``ours``: ``train.train`` on the config (our ``UNet``, our loop, EMA weights sampled through
  ``DenoisePipeline``).
- ``diffusers``: diffusers' ``UNet2DModel`` with the exact translation of our config's network
  (``unet_diffusion.convert.diffusers_config``: the same blocks, widths, attention and parameter
  count; 11 class embeddings, the last the null label), diffusers' own initialisation, trained by our
  loop (``bench.peers_gen.DiffusersUNetTask``) and sampled by ``DenoisePipeline``. It differs from
  ``ours`` in implementation (speed per step) and initialisation only.
- ``lucidrains``: its classifier-free-guidance ``Unet`` (``dim`` = our first width, ``dim_mults`` our
  width ratios; its own block layout: 2 residual blocks and a linear attention of 4 heads x 32 per
  level, full attention in the middle; the parameter count is printed) and ``GaussianDiffusion``
  with *our* objective (the config's prediction, noise schedule, timesteps and min-SNR weighting:
  v, cosine, 1,000, gamma 5; its defaults, epsilon without weighting, would compare objectives
  rather than networks), trained with its own loss in a short loop (``bench.peers_gen.LucidrainsRun``)
  on our recipe: the config's Adam(W), learning rate, warm-up and schedule, gradient clipping, and an
  ``ema_pytorch.EMA`` (the EMA its ``Trainer`` keeps) with the config's decay and warm-up, every step.
  Its ``Trainer`` defaults (Adam 1e-4 constant, EMA 0.995 every 10 steps, 100k steps) are made for
  long runs and would lose a minutes budget by recipe rather than by network. Sampled with its own
  DDIM (eta 0; its step spacing differs slightly from diffusers') and plain guidance
  ``uncond + s (cond - uncond)`` (its default drops the update's part parallel to the conditional
  output and ``sample`` rescales with phi 0.7; ours does neither).

**Equal time** (``bench.equal_time`` holds the rule). Each method trains for ``--minutes`` and plans
its own length as it goes: our loop with ``train.budget_minutes`` (for ours and diffusers), the
lucidrains loop with the same ``train.budget.TimeBudget``; each times its steps and re-plans at
fractions of the budget, so the config's learning-rate schedule (its own warm-up) ends with the
budget, which is also the hard stop. Time counts the training loop only (data loading inside it
included); setup, checkpoints and evaluation are left out. The method line and the JSON report the
steps the last plan set and the seconds per step the loop measured.

**Evaluation**, the same for every method, at half the budget and at its end (the EMA weights at
the step where half the time had passed; for our loop the run stops there with ``train.max_minutes``,
is evaluated, and resumes from its checkpoint to the end of the budget): ``--samples`` digits,
labels ``arange(N) % 10``, guidance ``--guidance`` and ``--sample-steps`` DDIM steps (defaults: the config's ``diffusion.guidance_scale`` and
``diffusion.sample_steps``). Reported per point: the share the classifier reads with softmax
p > 0.9 (confident), the share read as the label asked for (agreement), the Fréchet distance of
classifier features to R1, and that distance divided by FD(R2, R1), the real-vs-real distance at the
same sample count (1 = as close as real digits). The "real digits" row scores R2 itself.

Output: a table, ``bench/results/quality_gen[_quick].json``, a 10x10 sample grid per method (column
*k* asked for digit *k*) and ``quality_gen[_quick]_curve.png`` (FD ratio and agreement against
training minutes; needs matplotlib). Caveats: distances in this classifier's feature space are not
comparable with Inception FIDs; two points per method are a coarse curve; a busy machine slows a
method's steps, and its plan follows, so it gets fewer (the minutes and steps columns show what each got);
the lucidrains loop reads the training split from memory without augmentation (the config has none)
while our loop prepares each batch from the dataset inside the timed loop; all methods train in
float32. Sampling is the slow part on a CPU: at the defaults each point is 500 digits x 50 DDIM
steps x 2 (guidance) network calls, about 14 minutes for our network and 32 for lucidrains' on one
thread of the 2-core machine, so about 2 hours for the six points on top of 45 minutes of training
(``--sample-steps 10`` cuts it five-fold).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from bench.common import PROJECT_ROOT, Bench, describe, pyplot, quiet_progress_bars, run_bench, save_figure, save_grid
from bench.equal_time import STEP_CAP, add_options, budget_minutes, budget_overrides, quiet, train_in_halves
from bench.metrics import frechet_distance_of
from bench.peers_gen import DiffusersUNetTask, LucidrainsRun, missing_package, parameter_count, sample_lucidrains
from pipelines import DenoisePipeline
from pipelines.samplers import SAMPLER_SCHEDULERS
from train import load_config, train
from train.config import AugmentConfig
from train.data import open_source, split_indices
from train.transforms import diffusion_transform

CONFIG = PROJECT_ROOT / "configs" / "mnist.yaml"
METHODS = ("ours", "diffusers", "lucidrains")
CONFIDENT = 0.9          # a sample counts as confidently classified above this softmax probability
QUICK = dict(samples=50, sample_steps=4, classifier_epochs=1)
# --quick also shrinks the network to a quarter of its width and the batch to 16 (--set comes after).
QUICK_OVERRIDES = ["train.batch_size=16", "model.args.channels=[8,16,16]", "model.args.attention_head_channels=16"]

# What the benchmark fixes in every our-loop run (--set comes after and may change them).
LOOP_OVERRIDES = [
    "train.log_every=1",              # log.jsonl keeps every step's loss and learning rate
    "train.eval_every=0", "train.eval_batch_size=64", "train.checkpoint_every=0", "train.keep_checkpoints=1",
    "train.progress_bar=false", "diffusion.sample_every=0", "diffusion.num_samples=10",
    "data.check_images=false",        # this script reads every image itself first
]


# ---------------------------------------------------------------------------- the feature network
class DigitClassifier(nn.Module):
    """A small CNN for 28x28 digits; ``features`` is its 128-wide penultimate layer (the FD space)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),      # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),     # (B, 64, 7, 7)
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * 2 - 1)  # pixels in [0, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def fit_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int) -> DigitClassifier:
    """Train the classifier with Adam on ``images`` ``(N, 1, 28, 28)`` in [0, 1]."""
    torch.manual_seed(seed)
    model = DigitClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(images)).split(64):
            loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def classify(model: DigitClassifier, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(N, 128)`` and class probabilities ``(N, 10)`` of ``images`` in [0, 1]."""
    features = torch.cat([model.features(b) for b in images.split(500)])
    return features.numpy(), model.head(features).softmax(1).numpy()


# ---------------------------------------------------------------------------- scoring
def requested_labels(count: int, classes: int = 10) -> torch.Tensor:
    """The labels samples are asked for: 0, 1, ..., classes - 1, 0, 1, ... (``count / classes`` of each)."""
    if count <= 0 or count % classes:
        raise ValueError(f"the number of samples must be a positive multiple of {classes} (the same count of each digit); "
                         f"got {count}.")
    return torch.arange(count) % classes


def classifier_scores(probs: np.ndarray, asked: np.ndarray, threshold: float = CONFIDENT) -> dict:
    """From classifier probabilities ``(N, K)`` and the labels asked for ``(N,)``: the share read with
    probability above ``threshold`` (confident), the share read as the asked label (agreement), and
    the histogram of the classes read."""
    probs, asked = np.asarray(probs), np.asarray(asked)
    if probs.ndim != 2 or len(probs) != len(asked):
        raise ValueError(f"probs must be (N, K) with N = len(asked); got {probs.shape} and {asked.shape}.")
    read = probs.argmax(1)
    return dict(confident=float(np.mean(probs.max(1) > threshold)), agreement=float(np.mean(read == asked)),
                histogram=np.bincount(read, minlength=probs.shape[1]).tolist())


def score_samples(features: np.ndarray, probs: np.ndarray, asked: np.ndarray, r1_features: np.ndarray, real_fd: float) -> dict:
    """``classifier_scores`` plus the Fréchet distance to R1 and its ratio to the real-vs-real distance."""
    fd = frechet_distance_of(features, r1_features)
    return dict(classifier_scores(probs, asked), fd=fd, fd_ratio=fd / real_fd)


# ---------------------------------------------------------------------------- data
def read_split(config) -> dict:
    """The config's digits, split as a training run splits them: training and held-out images
    ``(N, 1, S, S)`` in [-1, 1] (the denoisers' transform, no augmentation) and their labels."""
    source = open_source(config)
    indices = list(range(len(source)))
    if config.data.limit:
        indices = indices[: config.data.limit]
    train_idx, held_idx = split_indices(indices, config.data.val_size, config.train.seed)
    transform = diffusion_transform(config.data.image_size, AugmentConfig())

    def load(idx):
        raws = [source.load(i) for i in idx]
        return torch.stack([transform(TF.pil_to_tensor(r.image)) for r in raws]), torch.tensor([r.label for r in raws])

    (train_images, train_labels), (held_images, held_labels) = load(train_idx), load(held_idx) if held_idx else (None, None)
    return dict(train_images=train_images, train_labels=train_labels, held_images=held_images, held_labels=held_labels)


def check_held_out(held: int, samples: int, val_size: float) -> None:
    """R1 and R2 need ``2 * samples`` held-out digits; say what to change when there are fewer."""
    if held < 2 * samples:
        raise SystemExit(
            f"data.val_size={val_size:g} holds out {held} digits, but the real sets R1 and R2 need 2 x --samples = "
            f"{2 * samples}. Hold out more (e.g. data.val_size: 1000 in the config, or --set data.val_size={2 * samples}) "
            f"or ask for fewer --samples (at most {held // 2 // 10 * 10})."
        )


# ---------------------------------------------------------------------------- methods
@dataclass
class Point:
    """One evaluation point of a method: the weights after ``minutes`` of training."""

    label: str                                   # "half" or "end"
    minutes: float                               # training time so far (the loop's clock)
    steps: int                                   # optimizer steps so far
    sample: Callable[[torch.Tensor], torch.Tensor]  # labels (N,) -> images (N, 1, S, S) in [0, 1]
    scores: dict = field(default_factory=dict)


@dataclass
class Method:
    """What one method did: its size, how its budget played out, and its evaluation points."""

    name: str
    params: int
    step_seconds: float                          # seconds per step the loop measured (the mean over its training)
    planned_steps: int                           # the run's length in the budget's last plan
    warmup_steps: int                            # the config's
    batch_size: int
    points: list[Point] = field(default_factory=list)
    notes: str = ""
    grid: str | None = None                      # the sample grid of the end point
    sample_seconds: float = 0.0                  # time spent sampling both points


def pipeline_sampler(pipe: DenoisePipeline, sample_steps: int, guidance: float, seed: int, sampler: str = "ddim") -> Callable:
    """Guided samples of ``pipe`` (DDIM unless ``sampler`` names another) for given labels, from a fixed noise seed."""
    pipe.set_progress_bar_config(disable=True)
    device = pipe.device

    def sample(labels: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(device).manual_seed(seed)
        return torch.cat([
            pipe(class_labels=chunk.to(device), guidance_scale=guidance, sampler=sampler, num_inference_steps=sample_steps,
                 generator=generator, output_type="pt").images.cpu()
            for chunk in labels.split(250)
        ])

    return sample


def open_pipeline(folder: Path) -> DenoisePipeline:
    """A pipeline folder, or a training checkpoint (``RUN/checkpoints/step-N``: its EMA weights with the
    noise schedule of ``RUN/config.yaml``), so a run can be scored at any saved step."""
    if not (folder / "ema").is_dir():
        return DenoisePipeline.from_pretrained(str(folder))
    from train.diffusion import noise_scheduler
    from unet_diffusion import UNet

    run_config = load_config(folder.parent.parent / "config.yaml")
    return DenoisePipeline(unet=UNet.from_pretrained(str(folder / "ema")), scheduler=noise_scheduler(run_config))


# ---------------------------------------------------------------------------- the plan and the reference
@dataclass
class Plan:
    """What every method gets: the config, the time budget and the sampling settings."""

    path: Path                                   # --config
    sets: list[str]                              # --set
    overrides: list[str]                         # LOOP_OVERRIDES, --quick's, then --set's
    config: object                               # the config they give
    minutes: float
    samples: int
    sample_steps: int
    guidance: float
    classifier_epochs: int
    seed: int
    sampler: str = "ddim"                        # --sampler (scoring --pipelines only)


def make_plan(bench: Bench) -> Plan:
    """``--quick``'s or the full run's settings, with the config's where an option is left out."""
    args, quick = bench.args, bench.args.quick
    overrides = [*LOOP_OVERRIDES, *(QUICK_OVERRIDES if quick else []), *args.sets]
    config = load_config(args.config, overrides)
    return Plan(
        args.config, args.sets, overrides, config, budget_minutes(args),
        samples=args.samples or (QUICK["samples"] if quick else 500),
        sample_steps=args.sample_steps or (QUICK["sample_steps"] if quick else config.diffusion.sample_steps),
        guidance=args.guidance if args.guidance is not None else config.diffusion.guidance_scale,
        classifier_epochs=args.classifier_epochs or (QUICK["classifier_epochs"] if quick else 3),
        seed=args.seed, sampler=args.sampler,
    )


@dataclass
class Reference:
    """What every sample is scored against: the split, the classifier and the real sets R1 and R2."""

    data: dict                                   # read_split's
    classifier: DigitClassifier
    asked: torch.Tensor                          # the labels samples are asked for
    r1_features: np.ndarray
    real_fd: float                               # FD(R2, R1)
    real: dict                                   # R2's scores
    accuracy: float                              # the classifier's on R1 + R2

    @property
    def held(self) -> int:
        return 0 if self.data["held_images"] is None else len(self.data["held_images"])

    def score(self, images: torch.Tensor) -> dict:
        """``score_samples`` of images ``(N, 1, 28, 28)`` in [0, 1] asked for ``asked``."""
        features, probs = classify(self.classifier, images)
        return score_samples(features, probs, self.asked.numpy(), self.r1_features, self.real_fd)


def make_reference(plan: Plan) -> Reference:
    """Split the digits as a run does, fit the classifier, and draw R1 and R2 from the held-out digits."""
    asked = requested_labels(plan.samples)
    data = read_split(plan.config)
    held = 0 if data["held_images"] is None else len(data["held_images"])
    check_held_out(held, plan.samples, plan.config.data.val_size)
    classifier = fit_classifier((data["train_images"] + 1) / 2, data["train_labels"], plan.classifier_epochs, plan.seed)
    order = torch.from_numpy(np.random.default_rng(plan.seed).permutation(held))
    r1, r2 = order[:plan.samples], order[plan.samples:2 * plan.samples]
    held01 = (data["held_images"] + 1) / 2
    r1_features, r1_probs = classify(classifier, held01[r1])
    r2_features, r2_probs = classify(classifier, held01[r2])
    held_labels = data["held_labels"].numpy()
    accuracy = float(np.mean(np.concatenate([r1_probs, r2_probs]).argmax(1) == held_labels[torch.cat([r1, r2]).numpy()]))
    real_fd = frechet_distance_of(r2_features, r1_features)
    real = dict(classifier_scores(r2_probs, held_labels[r2.numpy()]), fd=real_fd)
    return Reference(data, classifier, asked, r1_features, real_fd, real, accuracy)


# ---------------------------------------------------------------------------- training the methods
def run_our_loop(name: str, plan: Plan, make_task, workdir: Path, device: torch.device) -> Method:
    """Train ``name`` through ``train.train`` for the budget in two invocations, keeping a point after each."""
    run_dir = workdir / name
    common = [*plan.overrides, f"train.output_dir={run_dir}", f"diffusion.sample_steps={plan.sample_steps}"]

    def invoke(resume: str | None):
        config = load_config(plan.path, [*common, *budget_overrides(plan.minutes, resume)])
        task = make_task(config)
        train(config, resume=resume, task=task, log=quiet)
        if isinstance(task, DiffusersUNetTask):
            pipe = DenoisePipeline(unet=task.ema_model, scheduler=task.scheduler)
        else:
            pipe = DenoisePipeline.from_pretrained(str(run_dir / "pipeline")).to(device)  # the EMA weights
        return pipeline_sampler(pipe, plan.sample_steps, plan.guidance, plan.seed), pipe.unet

    halves = train_in_halves(run_dir, invoke)
    (_, unet), trained = halves[-1][1:]
    method = Method(name, parameter_count(unet), trained.seconds_per_step, trained.planned_steps,
                    plan.config.optim.warmup_steps, plan.config.train.batch_size)
    method.points = [Point(point, done.minutes, done.step, sample) for point, (sample, _), done in halves]
    if len(halves) == 1:
        method.points.append(dataclasses.replace(method.points[0], label="end"))
        method.notes = "the planned steps ran out before half the time"
    return method


def run_lucidrains(plan: Plan, data: dict, device: torch.device) -> Method:
    """Train lucidrains' model for the budget (planned in its loop), keeping the EMA at half time."""
    config, minutes = plan.config, plan.minutes
    capped = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=STEP_CAP))
    run = LucidrainsRun(capped, data["train_images"], data["train_labels"], plan.sample_steps, device)
    clock = run.run(minutes=minutes, snapshot_minutes=minutes / 2)
    params = parameter_count(run.snapshots[-1][3].model)
    method = Method("lucidrains", params, clock[-1] / len(clock), run.planned_steps, config.optim.warmup_steps,
                    config.train.batch_size)
    for label, point_minutes, point_steps, diffusion in run.snapshots:
        sample = lambda asked, d=diffusion: sample_lucidrains(d, asked, plan.guidance, plan.seed)
        method.points.append(Point(label, point_minutes, point_steps, sample))
    if len(run.snapshots) == 1:  # the steps ran out before half the time: one model for both points
        method.points.insert(0, Point("half", *run.snapshots[0][1:3], method.points[0].sample))
        method.notes = "the planned steps ran out before half the time"
    return method


def score_points(method: Method, reference: Reference, grid: Path) -> Method:
    """Sample and score every point of ``method``; the last point's first 100 samples go to ``grid`` (column k: digit k)."""
    started = time.perf_counter()
    for point in method.points:
        images = point.sample(reference.asked)                               # (N, 1, 28, 28) in [0, 1]
        point.scores = reference.score(images)
    method.grid = str(save_grid(images[:100], grid, nrow=10))
    method.sample_seconds = time.perf_counter() - started
    return method


def train_methods(bench: Bench, plan: Plan, reference: Reference) -> tuple[list[Method], dict[str, str]]:
    """Train, sample and score each method of ``--methods``; the methods done, and why others were skipped."""
    done, skipped = [], {}
    with tempfile.TemporaryDirectory(prefix="quality-gen-") as tmp:
        for name in bench.args.methods:
            missing = missing_package(name)
            if missing:
                skipped[name] = f"{missing} is not installed (pip install -e '.[bench]')"
                print(f"{name}: skipped, {skipped[name]}.")
                continue
            started = time.perf_counter()
            try:
                if name == "lucidrains":
                    method = run_lucidrains(plan, reference.data, bench.device)
                else:
                    make_task = DiffusersUNetTask if name == "diffusers" else (lambda c: None)
                    method = run_our_loop(name, plan, make_task, Path(tmp), bench.device)
            except ValueError as err:  # a config this peer cannot express
                skipped[name] = str(err)
                print(f"{name}: skipped, {err}")
                continue
            done.append(score_points(method, reference, bench.results_dir / f"{bench.results_name()}_{name}.png"))
            print(f"{name}: {method.params / 1e6:.2f} M parameters; {method.step_seconds:.3f} s/step -> planned "
                  f"{method.planned_steps} steps (warm-up {method.warmup_steps}); trained {method.points[-1].minutes:.2f} min, "
                  f"{method.points[-1].steps} steps; {time.perf_counter() - started:.0f} s in all, "
                  f"{method.sample_seconds:.0f} s of it sampling." + (f" Note: {method.notes}." if method.notes else ""))
    return done, skipped


def score_folders(bench: Bench, plan: Plan, reference: Reference) -> list[Method]:
    """Score the trained pipeline folders or checkpoints of ``--pipelines`` (no training)."""
    done = []
    for folder in bench.args.pipelines:
        pipe = open_pipeline(folder).to(bench.device)
        method = Method(str(folder), parameter_count(pipe.unet), 0.0, 0, 0, plan.config.train.batch_size,
                        [Point("trained", float("nan"), 0, pipeline_sampler(pipe, plan.sample_steps, plan.guidance, plan.seed, plan.sampler))])
        score_points(method, reference, bench.results_dir / f"{bench.results_name()}_{folder.parent.name}_{folder.name}.png")
        print(f"{folder}: scored in {method.sample_seconds:.0f} s; grid {method.grid}")
        done.append(method)
    return done


# ---------------------------------------------------------------------------- output
def plot_curves(methods: list[Method], real: dict, path: Path) -> Path | None:
    """FD / real-FD and agreement against training minutes, one line per method; None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for m in methods:
        x = [p.minutes for p in m.points]
        left.plot(x, [p.scores["fd_ratio"] for p in m.points], marker="o", label=f"{m.name} ({m.params / 1e6:.2f} M)")
        right.plot(x, [p.scores["agreement"] for p in m.points], marker="o", label=m.name)
    left.axhline(1.0, color="gray", linestyle="--", label="real digits")
    right.axhline(real["agreement"], color="gray", linestyle="--", label="real digits")
    left.set(xlabel="training minutes", ylabel="FD / real-vs-real FD", yscale="log",
             title="distance to real digits (lower is better)")
    right.set(xlabel="training minutes", ylabel="share read as the digit asked for", ylim=(0, 1.02), title="label agreement")
    for ax in (left, right):
        ax.set_xlim(left=0)
        ax.legend()
    return save_figure(fig, path)


def table_rows(methods: list[Method], real: dict, samples: int) -> list[dict]:
    rows = []
    for m in methods:
        for p in m.points:
            s = p.scores
            rows.append({"method": m.name, "at": p.label, "params": f"{m.params / 1e6:.2f} M", "minutes": f"{p.minutes:.2f}",
                         "steps": p.steps, "images seen": p.steps * m.batch_size, "confident": f"{s['confident']:.3f}",
                         "agreement": f"{s['agreement']:.3f}", "FD": f"{s['fd']:.2f}", "FD / real": f"{s['fd_ratio']:.2f}"})
    rows.append({"method": f"real digits (R2, {samples})", "confident": f"{real['confident']:.3f}",
                 "agreement": f"{real['agreement']:.3f}", "FD": f"{real['fd']:.2f}", "FD / real": "1.00"})
    return rows


def method_payload(m: Method) -> dict:
    points = [dict(at=p.label, minutes=p.minutes, steps=p.steps, images_seen=p.steps * m.batch_size, **p.scores)
              for p in m.points]
    return dict(params=m.params, seconds_per_step=m.step_seconds, planned_steps=m.planned_steps,
                warmup_steps=m.warmup_steps, notes=m.notes, grid=m.grid, points=points)


def report(bench: Bench, plan: Plan, reference: Reference, done: list[Method], skipped: dict, started: float) -> None:
    """The curve (after training), the JSON and the table."""
    args, config = bench.args, plan.config
    name = bench.results_name("pipelines" if args.pipelines else None)
    curve = plot_curves(done, reference.real, bench.results_dir / f"{name}_curve.png") if done and not args.pipelines else None
    payload = dict(
        quick=args.quick, config=str(plan.path), overrides=plan.sets, config_overrides=plan.overrides, minutes=plan.minutes,
        samples=plan.samples, sample_steps=plan.sample_steps, guidance=plan.guidance, sampler=plan.sampler, seed=plan.seed,
        train_seed=config.train.seed, batch_size=config.train.batch_size,
        split=dict(train=len(reference.data["train_images"]), held_out=reference.held, val_size=config.data.val_size),
        classifier=dict(epochs=plan.classifier_epochs, accuracy_r1_r2=reference.accuracy), real_digits=reference.real,
        skipped=skipped, curve=str(curve) if curve else None, methods={m.name: method_payload(m) for m in done},
        seconds_total=time.perf_counter() - started,
    )
    lines = []
    if done and not args.pipelines and curve is None:
        lines.append("note: matplotlib is not installed; no curve plot (pip install -e '.[bench]').")
    lines.append(f"sample grids: {', '.join(m.grid for m in done) or '-'}" + (f"; curve: {curve}" if curve else "")
                 + f". {time.perf_counter() - started:.0f} s in all.")
    bench.report(payload, table_rows(done, reference.real, plan.samples),
                 ["method", "at", "params", "minutes", "steps", "images seen", "confident", "agreement", "FD", "FD / real"],
                 *lines, name=name)


# ---------------------------------------------------------------------------- the entry
def options(parser) -> None:
    add_options(parser, CONFIG, METHODS,
                seed_help="seeds the classifier, the R1/R2 draw and the sampling noise (the split and the training follow "
                          "the config's train.seed)",
                pipelines_help="score these trained pipeline folders (runs/mnist/pipeline) or checkpoints "
                               "(runs/mnist/checkpoints/step-00000600) instead of training the methods")
    parser.add_argument("--samples", type=int, default=None,
                        help="digits per evaluation point and per real set (default 500; --quick 50)")
    parser.add_argument("--sample-steps", type=int, default=None,
                        help="DDIM steps (default: the config's diffusion.sample_steps; --quick 4)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="guidance scale (default: the config's diffusion.guidance_scale)")
    parser.add_argument("--classifier-epochs", type=int, default=None, help="(default 3; --quick 1)")
    parser.add_argument("--sampler", choices=list(SAMPLER_SCHEDULERS), default="ddim",
                        help="with --pipelines: the sampler (default ddim; the trained methods are always compared with DDIM)")


def measure(bench: Bench) -> None:
    args = bench.args
    if args.sampler != "ddim" and not args.pipelines:
        raise SystemExit("--sampler works with --pipelines (the trained methods are compared with DDIM, lucidrains' own).")
    if bench.device.type == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"  # our loop's Accelerator would otherwise take a GPU
    if not bench.has_data(*(["mnist/train.parquet"] if args.config == CONFIG else []),
                          what="MNIST (mnist/train.parquet: a Hugging Face parquet file with columns image, label)"):
        return
    quiet_progress_bars()
    started = time.perf_counter()
    plan = make_plan(bench)
    reference = make_reference(plan)
    config = plan.config
    print(f"MNIST generation at equal time: {describe(bench.info)}. {time.perf_counter() - started:.0f} s to read the digits "
          f"and fit the classifier. Split: {len(reference.data['train_images'])} training digits, {reference.held} held out "
          f"(data.val_size {config.data.val_size:g}, train.seed {config.train.seed}); classifier {plan.classifier_epochs} "
          f"epoch(s), accuracy {reference.accuracy:.3f} on R1 + R2; FD(R2, R1) = {reference.real_fd:.2f} at {plan.samples} "
          f"vs {plan.samples}.")
    print(f"Budget {plan.minutes:g} min per method, batch {config.train.batch_size}; {plan.samples} samples per point, "
          f"guidance {plan.guidance:g}, {plan.sample_steps} {plan.sampler.upper()} steps.")
    done, skipped = (score_folders(bench, plan, reference), {}) if args.pipelines else train_methods(bench, plan, reference)
    report(bench, plan, reference, done, skipped, started)


def main(argv=None) -> int:
    return run_bench("quality_gen", __doc__, options, measure, argv, timed=False)


if __name__ == "__main__":
    sys.exit(main())
