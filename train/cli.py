"""The ``unet-diffusion`` command line.

It lives in ``train`` because it is the top of the import chain (``train`` -> ``pipelines`` ->
``unet_diffusion``); each room registers its own subcommands through its ``commands.register``.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    import pipelines.commands
    import train.commands
    import unet_diffusion.commands

    parser = argparse.ArgumentParser(
        prog="unet-diffusion",
        description="Train, sample from, segment with and convert U-Nets for diffusion and segmentation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for room in (unet_diffusion.commands, pipelines.commands, train.commands):
        room.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"unet-diffusion {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
