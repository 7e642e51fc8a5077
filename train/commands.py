"""The ``train`` and ``demo`` subcommands (entry points of the group ``unet_diffusion.commands``).

Each ``add_*(subparsers)`` adds its parser with ``unet_diffusion.cli.add_command``; a handler takes the
parsed arguments and returns an exit status. The training stack loads inside the handlers.

- ``train --config NAME|FILE [--resume latest|PATH] [--quiet] [key.sub=value ...]``
- ``demo [--output DIR] [--resume latest] [--quiet] [key.sub=value ...]``: the quick start.
- ``plot RUN_DIR``: ``RUN_DIR/loss.png`` from the run's log (also written at the end of every run).
"""

from __future__ import annotations

import signal
import sys
import time

from unet_diffusion.cli import add_command
from unet_diffusion.errors import InputError

from .config import load_config, shipped_config_names

QUICKSTART = "quickstart"


def _common_options(parser) -> None:
    parser.add_argument("--resume", default=None, metavar="latest|PATH",
                        help="continue from the newest checkpoint of the output folder ('latest') or a checkpoint folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def add_train(subparsers) -> None:
    """The ``train`` subcommand."""
    train = add_command(subparsers, "train", run_train, "train a denoiser or a segmenter from a config file")
    train.add_argument("--config", required=True, metavar="NAME|FILE",
                       help=f"a YAML config file, or a shipped config by name: {', '.join(shipped_config_names())}")
    _common_options(train)


def add_demo(subparsers) -> None:
    """The ``demo`` subcommand."""
    demo = add_command(subparsers, "demo", run_demo,
                       "train the quick-start denoiser (a few minutes on a CPU) and write a sample grid")
    demo.add_argument("--output", default="runs/demo", help="output folder (default: runs/demo)")
    _common_options(demo)


def add_plot(subparsers) -> None:
    """The ``plot`` subcommand."""
    plot = add_command(subparsers, "plot", run_plot, "draw a run's loss and validation curves into RUN_DIR/loss.png")
    plot.add_argument("run_dir", metavar="RUN_DIR", help="a training run's output folder (with log.jsonl)")


def run_plot(args) -> int:
    """Draw RUN_DIR/loss.png from the run's log.jsonl: training loss, its running mean, the learning rate and
    every validation metric."""
    from .plots import plot_run

    path = plot_run(args.run_dir)
    if path is None:
        raise InputError('drawing needs matplotlib: pip install "unet-diffusion[track]" (or pip install matplotlib).')
    print(f"wrote {path}")
    return 0


def _train(config, resume) -> int:
    from .loop import NonFiniteLossError, train

    try:
        result = train(config, resume=resume)
    except NonFiniteLossError as err:
        print(f"unet-diffusion train: stopped: {err}", file=sys.stderr)
        return 1
    if result.interrupted:  # the loop has saved a checkpoint and said how to continue
        return 128 + int(getattr(signal, result.interrupted, signal.SIGTERM))
    return 0


def _load(config_name, args, *overrides):
    config = load_config(config_name, [*overrides, *args.overrides])
    if args.quiet:  # set on the config, not as an override: messages quote only the overrides a user typed
        config.train.progress_bar = False
    return config


def run_train(args) -> int:
    """Train from a YAML config; key.sub=value arguments override it (e.g. optim.lr=1e-4 train.steps=500).
    Runs on any number of processes under `accelerate launch`."""
    return _train(_load(args.config, args), args.resume)


def run_demo(args) -> int:
    """Train the shipped quickstart config on built-in shapes, then write samples.png and model.safetensors.
    Ctrl-C saves a checkpoint; run the same command with --resume latest to continue."""
    config = _load(QUICKSTART, args, f"train.output_dir={args.output}")
    from .checkpoint import list_checkpoints

    if args.resume is None and list_checkpoints(config.train.output_dir):
        raise InputError(f"{config.train.output_dir} already holds a run; continue it with --resume latest, "
                         "or pass --output NEW_FOLDER.")
    started = time.time()
    status = _train(config, args.resume)
    if status == 0:
        out = config.train.output_dir
        print(f"demo finished in {time.time() - started:.0f} s: samples {out}/samples.png, weights {out}/model.safetensors")
    return status
