"""Generation quality on MNIST: train ``configs/mnist.yaml`` for a fixed number of steps, sample
class-conditional digits with classifier-free guidance, and score them with a Fréchet distance on
the features of a digit classifier that this benchmark trains itself.

    UNET_DATA_DIR=/work/shared/data PYTHONPATH=. python bench/quality_gen.py --quick
    UNET_DATA_DIR=/work/shared/data PYTHONPATH=. python bench/quality_gen.py          # 2,000 samples
    UNET_DATA_DIR=/data PYTHONPATH=. python bench/quality_gen.py --device cuda --steps 20000   # as shipped

The 8,000 real digits are split once (seeded): half trains the classifier (a small CNN; its
128-feature penultimate layer is the feature space), and the other half is two disjoint real sets
R1 and R2 of ``--samples`` images each. Reported:

- the classifier's accuracy on R1 + R2 (held out from its training);
- the **floor**: the Fréchet distance between R1 and R2 (two real sets of the same size; what a
  perfect generator would score here, finite-sample noise included);
- **samples vs real**: the distance between the generated images and R1;
- the classes the classifier gives the samples (a histogram; uniform when the generator covers
  every digit) and how often that class is the one the sample was asked for.

Samples are asked for labels 0..9 in turn (a uniform spread) with guidance scale 3 and 50 DDIM steps
(the config's; ``--sample-steps`` to change). ``--width`` narrows the network for CPU budgets. Distances in this feature space are not comparable with Inception FIDs. The denoiser
trains on all the digits (R1 included): the distance measures
fidelity to the data set, as FID on a training set does. The budget on a CPU is tiny (the config
trains 20,000 steps); CIFAR-10 needs a GPU and is not run here.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import numpy as np
import torch
from torch import nn
from torchvision.utils import save_image

from bench.common import PROJECT_ROOT, RESULTS_DIR, base_parser, data_dir, describe, format_table, machine_info, setup_device, write_json
from bench.metrics import frechet_distance_of
from pipelines import DenoisePipeline
from train import load_config, train

CONFIG = PROJECT_ROOT / "configs" / "mnist.yaml"


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
    """Features ``(N, 128)`` and predicted classes ``(N,)`` of ``images``."""
    features = torch.cat([model.features(b) for b in images.split(500)])
    return features.numpy(), model.head(features).argmax(1).numpy()


def read_mnist(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits of the parquet file: images ``(N, 1, 28, 28)`` in [0, 1] and labels ``(N,)``."""
    from datasets import load_dataset

    table = load_dataset("parquet", data_files=str(path), split="train")
    images = torch.from_numpy(np.stack([np.asarray(im.convert("L"), dtype=np.float32) / 255 for im in table["image"]]))
    return images[:, None], torch.tensor(table["label"])


# ---------------------------------------------------------------------------- the benchmark
def main(argv=None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="denoiser training steps (default 400; --quick 20)")
    parser.add_argument("--batch", type=int, default=None, help="denoiser batch (default 64; --quick 16)")
    parser.add_argument("--samples", type=int, default=None, help="images to generate (default 2000; --quick 100)")
    parser.add_argument("--sample-steps", type=int, default=None, help="DDIM steps (default 50; --quick 5)")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    parser.add_argument("--classifier-epochs", type=int, default=None, help="(default 3; --quick 1)")
    parser.add_argument("--width", type=int, default=None,
                        help="channels of the first level, the config's network has 32 (default 32; --quick 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-run", type=Path, default=None, help="train into this folder and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.steps = args.steps or (20 if quick else 400)
    args.batch = args.batch or (16 if quick else 64)
    args.samples = args.samples or (100 if quick else 2000)
    args.sample_steps = args.sample_steps or (5 if quick else 50)
    args.classifier_epochs = args.classifier_epochs or (1 if quick else 3)
    args.width = args.width or (8 if quick else 32)

    parquet = data_dir() / "mnist" / "train.parquet"
    if not parquet.is_file():
        print(f"skipped: no MNIST at {parquet} (a Hugging Face parquet file with columns image, label). "
              "Set UNET_DATA_DIR to the folder that holds mnist/train.parquet.")
        return 0
    os.environ["UNET_DATA_DIR"] = str(data_dir())  # the config reads ${UNET_DATA_DIR}
    device = setup_device(args.device, args.threads)
    info = machine_info(device)

    # The real digits: classifier training half, then R1 and R2.
    images, labels = read_mnist(parquet)
    order = torch.from_numpy(np.random.default_rng(args.seed).permutation(len(images)))
    half = len(images) // 2
    if 2 * args.samples > len(images) - half:
        raise SystemExit(f"--samples {args.samples} is too many: the {len(images) - half} held-out real digits make two sets of at most "
                         f"{(len(images) - half) // 2}.")
    fit_idx, r1_idx, r2_idx = order[:half], order[half:half + args.samples], order[half + args.samples:half + 2 * args.samples]
    started = time.perf_counter()
    classifier = fit_classifier(images[fit_idx], labels[fit_idx], args.classifier_epochs, args.seed)
    held_idx = torch.cat([r1_idx, r2_idx])
    held_features, held_pred = classify(classifier, images[held_idx])
    accuracy = float(np.mean(held_pred == labels[held_idx].numpy()))
    r1_features, r2_features = held_features[: args.samples], held_features[args.samples:]
    floor = frechet_distance_of(r1_features, r2_features)
    classifier_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="mnist-") as tmp:
        run_dir = args.keep_run or Path(tmp) / "run"
        overrides = [f"train.steps={args.steps}", f"train.batch_size={args.batch}", f"train.output_dir={run_dir}",
                     f"train.seed={args.seed}", "train.eval_every=0", "train.checkpoint_every=0", "train.log_every=10",
                     "train.progress_bar=false", "diffusion.sample_every=0", "diffusion.num_samples=10",
                     f"diffusion.sample_steps={args.sample_steps}", f"optim.warmup_steps={min(500, args.steps // 10)}",
                     "data.val_size=0"]  # the denoiser's validation loss is not what this benchmark measures
        if args.width != 32:  # the config's channels are (32, 64, 64), one attention head of 32 at the lowest level
            w = args.width
            overrides += [f"model.args.channels={[w, 2 * w, 2 * w]}", f"model.args.attention_head_channels={2 * w}"]
        if device.type == "cuda":
            overrides.append("train.mixed_precision=bf16")
        started = time.perf_counter()
        result = train(load_config(CONFIG, overrides), log=lambda text: None)
        train_seconds = time.perf_counter() - started
        pipe = DenoisePipeline.from_pretrained(str(run_dir / "pipeline")).to(device)  # the EMA weights
        pipe.set_progress_bar_config(disable=True)

        requested = torch.arange(args.samples) % 10
        generator = torch.Generator(device).manual_seed(args.seed)
        started = time.perf_counter()
        samples = torch.cat([
            pipe(class_labels=chunk.to(device), guidance_scale=args.guidance, sampler="ddim",
                 num_inference_steps=args.sample_steps, generator=generator, output_type="pt").images.cpu()
            for chunk in requested.split(250)
        ])                                                                     # (N, 1, 28, 28) in [0, 1]
        sample_seconds = time.perf_counter() - started

    sample_features, sample_pred = classify(classifier, samples)
    distance = frechet_distance_of(sample_features, r1_features)
    histogram = np.bincount(sample_pred, minlength=10).tolist()
    agreement = float(np.mean(sample_pred == requested.numpy()))
    losses = result.losses
    first, last = (losses[min(losses)], losses[max(losses)]) if losses else (float("nan"), float("nan"))

    name = "quality_gen_quick" if quick else "quality_gen"
    grid_path = RESULTS_DIR / f"{name}_samples.png"
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    save_image(samples[:100], grid_path, nrow=10, padding=2, pad_value=1.0)  # column k: digit k asked for
    payload = dict(machine=info, quick=quick, width=args.width, steps=args.steps, batch=args.batch, samples=args.samples, sample_steps=args.sample_steps,
                   guidance=args.guidance, classifier_epochs=args.classifier_epochs, classifier_accuracy=accuracy,
                   frechet_real_vs_real=floor, frechet_samples_vs_real=distance, sample_class_histogram=histogram,
                   label_agreement=agreement, loss_first=first, loss_last=last, losses=losses, train_seconds=train_seconds,
                   sample_seconds=sample_seconds, classifier_seconds=classifier_seconds, overrides=overrides, grid=str(grid_path))
    path = write_json(name, payload, args.out)

    print(f"MNIST generation: {describe(info)}. Denoiser: width {args.width}, {args.steps} steps of batch {args.batch} in {train_seconds:.0f} s "
          f"(loss {first:.3f} -> {last:.3f}); {args.samples} samples, guidance {args.guidance}, {args.sample_steps} DDIM steps, "
          f"in {sample_seconds:.0f} s. Classifier: {args.classifier_epochs} epoch(s) on {half} real digits.")
    if device.type == "cpu":
        print("CPU only, no GPU here: the budget is tiny (the config trains 20,000 steps of batch 128), and the CIFAR-10 "
              "run of the issue needs a GPU: not run.")
    print(f"sample class histogram (digits 0..9, as the classifier reads them): {histogram}")
    print(f"sample grid (column k asked for digit k): {grid_path}; JSON: {path}")
    rows = [
        {"measure": "classifier accuracy on held-out real digits", "value": f"{accuracy:.4f}"},
        {"measure": f"Fréchet distance, real vs real ({args.samples} vs {args.samples}; the floor)", "value": f"{floor:.2f}"},
        {"measure": f"Fréchet distance, samples vs real ({args.samples} vs {args.samples})", "value": f"{distance:.2f}"},
        {"measure": "samples classified as the digit asked for", "value": f"{agreement:.4f}"},
        {"measure": "sample classes, fewest / most (uniform: each 1/10)",
         "value": f"{min(histogram) / args.samples:.3f} / {max(histogram) / args.samples:.3f}"},
    ]
    print(format_table(rows, ["measure", "value"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
