"""What every pipeline call does around the network: its own argument rules, and eval mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from unet_diffusion.errors import InputError, fail_if  # fail_if: the pipelines' argument rules (light: the CLI uses it too)


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


def check_finite(**tensors) -> None:
    """Each named input (a tensor, or a list of them, or ``None``) holds no NaN or infinity: once per call, before the
    first network step, instead of a result of NaNs at the end. Never in the denoising loop: reading the answer of a
    tensor on an accelerator waits for the device, which once per call costs nothing next to the steps."""
    for name, value in tensors.items():
        for tensor in value if isinstance(value, (list, tuple)) else [value]:
            if tensor is not None and tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise InputError(f"{name} holds NaN or infinite values; clean the input (e.g. torch.nan_to_num) before calling.")
