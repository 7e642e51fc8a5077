"""What every pipeline call does around the network: its own argument rules, and eval mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from unet_diffusion.errors import InputError


def fail_if(*rules: tuple[bool, str]) -> None:
    """Raise ``InputError`` with the message of the first ``(broken, message)`` rule that is broken.

    The pipelines check here only what belongs to them (steps, guidance, batch, output type, ...);
    what the network accepts is checked by ``unet_diffusion.inputs``.
    """
    for broken, message in rules:
        if broken:
            raise InputError(message)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` in eval mode (no dropout, BatchNorm running statistics) and restore its mode after.

    A pipeline built around a model that is being trained (sample grids during training) must not
    sample with dropout on, nor leave the model in eval mode for the next training step.
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
