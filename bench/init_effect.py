"""What the initialisation does to a short run: the shipped configs trained for a fixed number of
steps with ``model.args.weight_init=auto`` (zero-initialised residual branches, attention outputs and
head for residual cores; He normal for classic cores) and with ``torch`` (PyTorch's defaults, what the
package did before), over several seeds, through the package's own loop.

    UNET_DATA_DIR=/path/to/data python -m bench.init_effect --quick --threads 1
    UNET_DATA_DIR=/path/to/data python -m bench.init_effect --threads 1       # the README's table

Reported per config and scheme: the mean training loss over the first and the last 20% of the
logged steps, each averaged over the seeds (mean and min-max). Shorter runs than the configs' own
(``--steps``, and ``--batch``/``--crop`` to keep them cheap) so that several seeds fit in minutes;
the loss curve's start is where initialisation matters.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

from bench.common import PROJECT_ROOT, Bench, describe, quiet_progress_bars, run_bench
from train import load_config, train

RUNS = {  # config -> overrides that make a short, cheap run of it
    "mnist": ["train.batch_size=16", "optim.warmup_steps=10"],
    "isbi2012": ["train.batch_size=2", "data.image_size=128", "optim.warmup_steps=5", "data.val_size=0"],
}
SCHEMES = ("auto", "torch")


def loss_window(losses: dict[int, float], start: float, stop: float) -> float:
    """Mean of the logged losses whose position in the run lies in [start, stop) (fractions)."""
    steps = sorted(losses)
    chosen = steps[int(start * len(steps)): max(int(stop * len(steps)), int(start * len(steps)) + 1)]
    return statistics.fmean(losses[s] for s in chosen)


def options(parser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 150; --quick 6)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per config and scheme (default 3; --quick 1)")


def run_losses(name: str, scheme: str, steps: int, seed: int) -> dict[int, float]:
    """The logged losses of one short run of the shipped config ``name`` with ``weight_init=scheme``."""
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(PROJECT_ROOT / "configs" / f"{name}.yaml", [
            *RUNS[name], f"model.args.weight_init={scheme}", f"train.steps={steps}", f"train.seed={seed}",
            f"train.output_dir={tmp}/run", "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=0",
            "train.max_minutes=null", "train.progress_bar=false", "diffusion.num_samples=1",
            "diffusion.sample_steps=1", "segmentation.num_overlays=0"])
        return train(config, log=lambda text: None).losses


def measure(bench: Bench) -> None:
    args = bench.args
    steps = args.steps or (6 if args.quick else 150)
    seeds = args.seeds or (1 if args.quick else 3)
    if not bench.has_data("mnist", "isbi2012-membrane", what="MNIST or ISBI 2012"):
        return
    quiet_progress_bars()
    results, rows = {}, []
    for name in RUNS:
        for scheme in SCHEMES:
            firsts, lasts, started = [], [], time.perf_counter()
            for seed in range(seeds):
                losses = run_losses(name, scheme, steps, seed)
                firsts.append(loss_window(losses, 0.0, 0.2))
                lasts.append(loss_window(losses, 0.8, 1.0))
            results[f"{name}/{scheme}"] = dict(first=firsts, last=lasts, seconds=time.perf_counter() - started)
            rows.append({"config": name, "weight_init": scheme, "steps": steps, "seeds": seeds,
                         "loss, first 20%": f"{statistics.fmean(firsts):.4f} ({min(firsts):.4f}-{max(firsts):.4f})",
                         "loss, last 20%": f"{statistics.fmean(lasts):.4f} ({min(lasts):.4f}-{max(lasts):.4f})"})
            print(f"{name} / {scheme}: {time.perf_counter() - started:.0f} s", flush=True)
    bench.report(dict(steps=steps, seeds=seeds, overrides=RUNS, results=results), rows,
                 ["config", "weight_init", "steps", "seeds", "loss, first 20%", "loss, last 20%"], describe(bench.info))


def main(argv=None) -> int:
    return run_bench("init_effect", __doc__, options, measure, argv, timed=False)


if __name__ == "__main__":
    sys.exit(main())
