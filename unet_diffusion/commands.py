"""The ``convert`` subcommand (an entry point of the group ``unet_diffusion.commands``, see ``cli.py``).

``add_convert(subparsers)`` adds its parser, run by ``run_convert``; torch and the
network load inside the handler.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli import add_command
from .errors import InputError
from .hub import DIFFUSERS_CLASSES, OUR_CLASS, read_json, resolve, source_kind  # light: no torch

TO_OURS, TO_DIFFUSERS = "unet-diffusion", "diffusers"
DTYPES = ("float32", "float16", "bfloat16")


def add_convert(subparsers) -> None:
    """The ``convert`` subcommand."""
    convert = add_command(subparsers, "convert", run_convert,
                          "convert a U-Net folder between diffusers' format and ours (same outputs)")
    convert.add_argument("src", metavar="SRC", help="folder with config.json and safetensors weights, or a Hub id (org/name)")
    convert.add_argument("dst", metavar="DST", help="new folder to write")
    convert.add_argument("--to", choices=(TO_OURS, TO_DIFFUSERS), help="target format (default: the other one than SRC's)")
    convert.add_argument("--variant", help="read SRC's weights of this variant, e.g. fp16")
    convert.add_argument("--dtype", choices=DTYPES, default="float32", help="precision of the written weights (default float32)")
    convert.add_argument("--overwrite", action="store_true",
                         help="replace what DST holds: its files are removed and the converted model written (a DST with subfolders is refused)")


def run_convert(args: argparse.Namespace) -> int:
    """Convert a save_pretrained folder: a diffusers UNet2DModel / UNet2DConditionModel becomes our UNet,
    our UNet becomes the diffusers model with the same outputs. The direction is read from SRC/config.json."""
    src, dst = resolve(args.src), Path(args.dst)  # a folder, or a Hub id read through the cache
    kind = source_kind(src)  # checked before torch and diffusers load: a mistake is reported at once
    config_path = src / "config.json"
    if kind not in ("unet", "diffusers-unet", "other-model"):
        raise FileNotFoundError(f"{src} has no config.json; SRC must be a folder written by save_pretrained.")
    class_name = read_json(config_path).get("_class_name", OUR_CLASS)
    if kind == "other-model":
        raise InputError(f"{config_path} describes a {class_name!r}; expected UNet, {' or '.join(DIFFUSERS_CLASSES)}.")
    if dst.exists() and any(dst.iterdir()) and not args.overwrite:
        raise InputError(f"{dst} exists and is not empty; choose a new folder or pass --overwrite.")
    source_format = TO_DIFFUSERS if kind == "diffusers-unet" else TO_OURS

    import torch

    from .convert import to_diffusers
    from .outputs import staged_output
    from .unet import UNet

    target = args.to or (TO_OURS if source_format == TO_DIFFUSERS else TO_DIFFUSERS)
    if target == source_format:
        raise InputError(f"{src} is already a {target} model ({class_name}); nothing to convert. Leave out --to.")
    model = UNet.from_pretrained(src, variant=args.variant)
    out = to_diffusers(model) if target == TO_DIFFUSERS else model
    # nn.Module.to: ModelMixin.to warns about float32-only modules, which these models do not have.
    with staged_output(dst, args.overwrite, reads=[src]) as staging:
        torch.nn.Module.to(out, getattr(torch, args.dtype)).save_pretrained(staging)
    params = sum(p.numel() for p in out.parameters())
    print(f"{src} ({class_name}) -> {dst} ({type(out).__name__}, {params:,} parameters, {args.dtype})")
    return 0
