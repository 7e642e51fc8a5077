"""The ``unet-diffusion`` command line.

Each subcommand is an entry point of the group ``unet_diffusion.commands`` (see ``pyproject.toml``):
a function ``add(subparsers)`` that adds its parser with ``add_command`` (which records its handler). The rooms
register themselves there, so this package never imports ``pipelines`` or ``train``; and only the
subcommand being run is loaded, so ``unet-diffusion sample`` never imports the training stack.
Command modules import nothing heavy at module level: torch and friends load inside the handlers.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from importlib.metadata import EntryPoint, entry_points

from .errors import InputError

GROUP = "unet_diffusion.commands"
# The mistakes of the user, printed as one line with exit status 1: the project's InputError (every
# check of user input raises it) and the missing files.
USER_ERRORS = (InputError, FileNotFoundError, NotADirectoryError)


def add_command(subparsers, name: str, handler, help: str, **defaults) -> argparse.ArgumentParser:
    """Add the subcommand ``name``: ``handler(args)`` runs it and returns the exit status, and its docstring is the
    command's description in ``--help``; ``defaults`` are set on the parsed arguments too (``api_flags``: the flags
    of the Python names its errors may use)."""
    parser = subparsers.add_parser(name, help=help, description=inspect.getdoc(handler))
    parser.set_defaults(func=handler, **defaults)
    return parser


def command_entry_points() -> dict[str, EntryPoint]:
    """The installed subcommands by name."""
    return {point.name: point for point in entry_points(group=GROUP)}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or with ``only`` that one (the others are not imported)."""
    parser = argparse.ArgumentParser(
        prog="unet-diffusion",
        description="Train, sample from, segment with and convert U-Nets for diffusion and segmentation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    points = command_entry_points()
    if not points:
        parser.error("no subcommands are installed; install the project (pip install -e .) so its entry points exist.")
    for name in [only] if only in points else points:
        points[name].load()(subparsers)
    return parser


def _command_name(argv: list[str]) -> str | None:
    """The subcommand ``argv`` asks for: its first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), None)


def user_message(err: BaseException, api_flags: dict[str, str]) -> str:
    """The error's message, with the Python names of options replaced by their flags (``num_inference_steps`` -> ``--steps``)."""
    message = str(err)
    for name, flag in api_flags.items():
        message = re.sub(rf"(?<![\w-]){name}\b", flag, message)
    return message


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=_command_name(argv))
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:  # anything else is a bug: it keeps its traceback
        print(f"unet-diffusion {args.command}: error: {user_message(err, getattr(args, 'api_flags', {}))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
