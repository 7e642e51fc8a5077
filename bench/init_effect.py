"""What the initialisation does to a short run: the shipped configs trained for a fixed number of
steps with ``model.args.weight_init=auto`` (zero-initialised residual branches, attention outputs and
head for residual cores; He normal for classic cores) and with ``torch`` (PyTorch's defaults, what the
package did before), over several seeds, through the package's own loop.

    UNET_DATA_DIR=/path/to/data python bench/init_effect.py --quick --threads 1
    UNET_DATA_DIR=/path/to/data python bench/init_effect.py --threads 1       # the README's table

Reported per config and scheme: the mean training loss over the first and the last 20% of the
logged steps, each averaged over the seeds (mean and min-max). Shorter runs than the configs' own
(``--steps``, and ``--batch``/``--crop`` to keep them cheap) so that several seeds fit in minutes;
the loss curve's start is where initialisation matters.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.common import PROJECT_ROOT, base_parser, data_dir, describe, format_table, machine_info, setup_device, write_json
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


def main(argv=None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default 150; --quick 6)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per config and scheme (default 3; --quick 1)")
    args = parser.parse_args(argv)
    steps = args.steps or (6 if args.quick else 150)
    seeds = args.seeds or (1 if args.quick else 3)
    if not (data_dir() / "mnist").is_dir() or not (data_dir() / "isbi2012-membrane").is_dir():
        print(f"skipped: MNIST or ISBI 2012 is not under {data_dir()}; set UNET_DATA_DIR.")
        return 0
    os.environ["UNET_DATA_DIR"] = str(data_dir())
    device = setup_device(args.device, args.threads)
    info = machine_info(device)

    results, rows = {}, []
    for name, overrides in RUNS.items():
        for scheme in SCHEMES:
            firsts, lasts, started = [], [], time.perf_counter()
            for seed in range(seeds):
                with tempfile.TemporaryDirectory() as tmp:
                    config = load_config(PROJECT_ROOT / "configs" / f"{name}.yaml", [
                        *overrides, f"model.args.weight_init={scheme}", f"train.steps={steps}", f"train.seed={seed}",
                        f"train.output_dir={tmp}/run", "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=0",
                        "train.max_minutes=null", "train.progress_bar=false", "diffusion.num_samples=1",
                        "diffusion.sample_steps=1", "segmentation.num_overlays=0"])
                    losses = train(config, log=lambda text: None).losses
                firsts.append(loss_window(losses, 0.0, 0.2))
                lasts.append(loss_window(losses, 0.8, 1.0))
            results[f"{name}/{scheme}"] = dict(first=firsts, last=lasts, seconds=time.perf_counter() - started)
            rows.append({"config": name, "weight_init": scheme, "steps": steps, "seeds": seeds,
                         "loss, first 20%": f"{statistics.fmean(firsts):.4f} ({min(firsts):.4f}-{max(firsts):.4f})",
                         "loss, last 20%": f"{statistics.fmean(lasts):.4f} ({min(lasts):.4f}-{max(lasts):.4f})"})
            print(f"{name} / {scheme}: {time.perf_counter() - started:.0f} s", flush=True)

    path = write_json("init_effect_quick" if args.quick else "init_effect",
                      dict(machine=info, steps=steps, seeds=seeds, overrides=RUNS, results=results), args.out)
    print(f"{describe(info)}; JSON: {path}")
    print(format_table(rows, ["config", "weight_init", "steps", "seeds", "loss, first 20%", "loss, last 20%"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
