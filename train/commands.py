"""Subcommands of the ``unet-diffusion`` command line that belong to this package.

``register(subparsers)`` adds each subcommand with ``set_defaults(func=handler)``; a handler takes
the parsed arguments and returns an exit status.

- ``train --config configs/X.yaml [--resume latest|PATH] [key.sub=value ...]``
- ``demo [--output DIR] [key.sub=value ...]``: the quick start (configs/quickstart.yaml).
"""

from __future__ import annotations

import signal
import sys
import time

from .config import PROJECT_ROOT, load_config

QUICKSTART = PROJECT_ROOT / "configs" / "quickstart.yaml"


def register(subparsers) -> None:
    """Add this package's subcommands to the ``unet-diffusion`` parser."""
    train = subparsers.add_parser(
        "train", help="train a denoiser or a segmenter from a config file",
        description="Train from a YAML config; key.sub=value arguments override it (e.g. optim.lr=1e-4 train.steps=500). "
                    "Runs on any number of processes under `accelerate launch`.",
    )
    train.add_argument("--config", required=True, help="YAML config, e.g. configs/quickstart.yaml")
    train.add_argument("--resume", default=None, metavar="latest|PATH",
                       help="continue from the newest checkpoint of train.output_dir ('latest') or a checkpoint folder")
    train.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    train.set_defaults(func=run_train)

    demo = subparsers.add_parser(
        "demo", help="train the quick-start denoiser (a few minutes on a CPU) and write a sample grid",
        description="Train configs/quickstart.yaml on built-in shapes, then write samples.png and model.safetensors.",
    )
    demo.add_argument("--output", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    demo.set_defaults(func=run_demo)


def _train(config, resume) -> int:
    from .loop import NonFiniteLossError, train

    try:
        result = train(config, resume=resume)
    except NonFiniteLossError as err:
        print(f"unet-diffusion train: stopped: {err}", file=sys.stderr)
        return 1
    if result.interrupted:
        return 128 + int(getattr(signal, result.interrupted, signal.SIGTERM))
    return 0


def run_train(args) -> int:
    """``unet-diffusion train``."""
    config = load_config(args.config, args.overrides)
    return _train(config, args.resume)


def run_demo(args) -> int:
    """``unet-diffusion demo``: train the quick start from scratch and report where the results are."""
    if not QUICKSTART.is_file():
        raise FileNotFoundError(f"the quick-start config {QUICKSTART} is missing; run the demo from a clone of the project.")
    config = load_config(QUICKSTART, [f"train.output_dir={args.output}", *args.overrides])
    from .checkpoint import list_checkpoints

    if list_checkpoints(config.train.output_dir):
        raise ValueError(f"{config.train.output_dir} already holds a run; remove it or pass --output NEW_FOLDER.")
    started = time.time()
    status = _train(config, None)
    if status == 0:
        out = config.train.output_dir
        print(f"demo finished in {time.time() - started:.0f} s: samples {out}/samples.png, weights {out}/model.safetensors")
    return status
