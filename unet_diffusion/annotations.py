"""Values read from JSON or YAML, checked against type annotations.

One checker serves every configuration: a ``UNet`` config (``config.json``, safetensors metadata,
``model.args``) against ``UNet.__init__``'s annotations, and a training config against its
dataclasses (``train.config``). A value that does not fit is an ``InputError`` naming the key,
what was expected and what was given. JSON and YAML have no tuples, so a list fits ``tuple[...]``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

from .errors import InputError, InputTypeError

UNIONS = (typing.Union, types.UnionType)
BOOL_WORDS = {"true": True, "yes": True, "false": False, "no": False}


class _NoFit(Exception):
    """Internal: the value does not fit the hint (``check_value`` turns it into the message)."""


def describe(hint) -> str:
    """A type hint as people write it: ``int``, ``tuple[int, ...]``, ``str | None``, ``'a' | 'b'``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "None"
    if origin is Literal:
        return " | ".join(map(repr, args))
    if origin in UNIONS:
        return " | ".join(map(describe, args))
    if origin is not None:
        return f"{origin.__name__}[{', '.join('...' if arg is Ellipsis else describe(arg) for arg in args)}]"
    return getattr(hint, "__name__", str(hint))


def check_value(value, hint, key: str, *, coerce: bool = False):
    """``value`` if it fits the annotation ``hint``, converted to it (a list for ``tuple[...]`` becomes a tuple,
    an int for ``float`` a float, a dict for a dataclass that dataclass); else an ``InputError`` naming ``key``.

    ``coerce=True`` also takes the forms numbers and booleans have in hand-written YAML and ``key=value``
    overrides: ``'1e-4'`` for a float (PyYAML reads an exponent without a dot as a string), ``2.0`` for an
    int, ``'yes'``/``'false'`` for a bool.
    """
    try:
        return _convert(value, hint, key, coerce)
    except _NoFit:
        if typing.get_origin(hint) is Literal:
            choices = ", ".join(map(repr, typing.get_args(hint)))
            quote = " (YAML reads a bare yes, no, on or off as a boolean: quote it)" if isinstance(value, bool) else ""
            raise InputError(f"{key} must be one of {choices}; got {value!r}{quote}.") from None
        raise InputTypeError(f"{key} must be {describe(hint)}; got {value!r} ({type(value).__name__}).") from None


def _convert(value, hint, key: str, coerce: bool):
    """``value`` converted to ``hint``, or ``_NoFit``; ``key`` names nested dataclasses' fields in their errors."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or (hint is type(None) and value is None):
        return value
    if origin in UNIONS:
        for option in args:  # in the order written: the first that fits wins
            try:
                return _convert(value, option, key, coerce)
            except _NoFit:
                pass
    elif origin is Literal:
        if any(value == choice and type(value) is type(choice) for choice in args):
            return value
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            return build_dataclass(hint, value, f"{key}.", coerce=coerce)
    elif (origin or hint) in (list, tuple):
        if isinstance(value, (list, tuple)):
            return _convert_items(value, origin or hint, args, key, coerce)
    elif (origin or hint) is dict:
        if isinstance(value, dict):
            if not args:
                return dict(value)
            return {_convert(k, args[0], key, coerce): _convert(v, args[1], key, coerce) for k, v in value.items()}
    elif hint in (bool, int, float, str):
        return _convert_scalar(value, hint, coerce)
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise _NoFit


def _convert_items(value: list | tuple, kind: type, args: tuple, key: str, coerce: bool) -> list | tuple:
    """The items of a list or tuple converted to ``args`` (``tuple[int, ...]``, ``tuple[int, int]``, ``list[str]``)."""
    if kind is tuple and len(args) == 2 and args[1] is Ellipsis:
        args = args[:1] * len(value)
    elif kind is list and args:
        args = args * len(value)
    if args and len(args) != len(value):
        raise _NoFit
    return kind(_convert(item, arg, key, coerce) for item, arg in zip(value, args)) if args else kind(value)


def _convert_scalar(value, hint: type, coerce: bool):
    """``value`` as a bool, int, float or str (``hint``); ``coerce`` as in ``check_value``."""
    if hint is bool:
        if isinstance(value, bool):
            return value
        if coerce and isinstance(value, str) and value.lower() in BOOL_WORDS:
            return BOOL_WORDS[value.lower()]
    elif isinstance(value, bool):
        pass  # True is an int to Python, but never a number or a string in a config
    elif hint is int:
        if isinstance(value, int):
            return value
        if coerce and isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)):
            return float(value)
        if coerce and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise _NoFit


def closest(key, names) -> str | None:
    """The name in ``names`` closest to a misspelt ``key`` (for a "did you mean" hint), or ``None`` if none is close."""
    found = difflib.get_close_matches(str(key), list(names), n=1)
    return found[0] if found else None


def check_arguments(function, values: dict, source: str = "the arguments", *, coerce: bool = False) -> dict:
    """``values`` checked against ``function``'s annotations (converted as in ``check_value``); names
    without an annotation pass as they are. Raises ``InputError`` "``source``: ``key`` must be ...".
    """
    hints = typing.get_type_hints(function)
    try:
        return {key: check_value(value, hints[key], key, coerce=coerce) if key in hints else value
                for key, value in values.items()}
    except InputError as err:
        raise type(err)(f"{source}: {err}") from None


def build_dataclass(cls, values: dict, prefix: str = "", *, coerce: bool = False):
    """An instance of the dataclass ``cls`` from a nested dict: each value checked against its field's
    annotation (nested dataclasses from nested dicts), fields left out keep their defaults.

    An unknown key is an ``InputError`` that names the closest field; ``prefix`` (``"optim."``) is the
    dotted path of ``cls`` in the whole config, for the messages.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [key for key in values if key not in names]
    if unknown:
        key = unknown[0]
        close = closest(key, names)
        where = f"in {prefix.rstrip('.')}" if prefix else "at the top level"
        hint = f" Did you mean {prefix}{close}?" if close else ""
        raise InputError(f"unknown key {prefix}{key} {where}.{hint} Valid keys: {', '.join(names)}.")
    return cls(**{key: check_value(value, hints[key], f"{prefix}{key}", coerce=coerce) for key, value in values.items()})
