"""Packages whose public names load on first use (PEP 562).

``import pipelines.commands`` runs ``pipelines/__init__.py``; if that imported the pipelines, every
``unet-diffusion --help`` would pay seconds for torch and diffusers. Each package lists its names
and the module that defines each, and gets its ``__getattr__`` / ``__dir__`` from here.
"""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose names ``exports`` maps to relative modules."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
