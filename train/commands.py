"""Subcommands of the ``unet-diffusion`` command line that belong to this package.

``register(subparsers)`` adds each subcommand with ``set_defaults(func=handler)``; a handler takes
the parsed arguments and returns an exit status.
"""

from __future__ import annotations


def register(subparsers) -> None:
    """Add this package's subcommands to the ``unet-diffusion`` parser."""
