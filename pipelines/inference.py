"""What every pipeline call does around the network: its own argument rules, and eval mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from unet_diffusion.errors import fail_if  # noqa: F401  (the pipelines' argument rules; light, so the CLI uses it too)


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
