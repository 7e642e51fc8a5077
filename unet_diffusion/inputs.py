"""What a ``UNet`` accepts as input: the one place that checks a sample, a timestep, class labels and
cross-attention context against a model's configuration, and that says what a configuration means for its
inputs (its spatial axes, its null label, that a denoiser keeps its input's size).

``UNet.forward`` calls these on every call; pipelines and training call ``check_conditioning`` once
before a loop, so that a bad label fails before any noise is drawn.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import torch

from .errors import InputError, InputTypeError
from .nd import SHAPES


# ---------------------------------------------------------------------------- what a config says about its inputs
def _field(config, name: str, default=None):
    """A field of a U-Net config: a ``model.config`` or plain dict (also a diffusers config), or the network's own."""
    return config.get(name, default) if isinstance(config, Mapping) else getattr(config, name, default)


def model_dims(config) -> int:
    """The spatial axes a U-Net config's model takes (1, 2 or 3); a diffusers U-Net's config has no ``dims``: 2."""
    return int(_field(config, "dims", 2))


def null_label(config) -> int | None:
    """The class label that means "no label" for classifier-free guidance: index ``num_class_labels``, one past the
    data's labels; ``None`` for a model without one (not class-conditional, or built with ``null_class_label=False``)."""
    classes = _field(config, "num_class_labels")
    return classes if classes is not None and _field(config, "null_class_label", False) else None


def class_table_size(config) -> int | None:
    """Rows of the class-embedding table: the data's labels, and the null label when the model has one."""
    classes = _field(config, "num_class_labels")
    return None if classes is None else classes + int(null_label(config) is not None)


def check_keeps_size(model, size: int | tuple[int, ...]) -> None:
    """A denoiser's output has its input's size (a sample is stepped in place); a valid-padding U-Net shrinks it.

    Raises ``InputError`` naming valid sizes nearby (a size the model does not take) or ``padding='same'``.
    """
    sides = (int(size),) if isinstance(size, numbers.Integral) else tuple(int(side) for side in size)
    out = tuple(model.output_size(sides))
    if out != sides:
        raise InputError(f"a {' x '.join(map(str, sides))} input gives a {' x '.join(map(str, out))} output with this "
                         "valid-padding U-Net; a denoiser must keep the size (use padding='same').")


# ---------------------------------------------------------------------------- checks of each input
def check_sample(model, sample: torch.Tensor) -> None:
    """``sample`` is a floating ``(B, in_channels, ...)`` tensor with the model's ``dims`` spatial axes, of a size it takes."""
    dims = model.config.dims
    if not isinstance(sample, torch.Tensor):
        raise InputTypeError(f"sample must be a torch.Tensor of shape {SHAPES[dims]}; got {type(sample).__name__}.")
    if not sample.is_floating_point():
        raise InputTypeError(f"sample must be a floating-point tensor; got dtype {sample.dtype}. Convert it, e.g. x.float() / 255.")
    if sample.ndim != dims + 2:
        raise InputError(f"this model has dims={dims}: sample must have shape {SHAPES[dims]}; got shape {tuple(sample.shape)}.")
    channels = model.config.in_channels
    if sample.shape[1] != channels:
        raise InputError(f"this model takes {channels}-channel input; got {sample.shape[1]} channels (shape {tuple(sample.shape)}).")
    if not model.config.pad_input:
        for side in sample.shape[2:]:
            model.output_size(int(side))


def timestep_tensor(config, timestep, batch: int, device: torch.device) -> torch.Tensor | None:
    """The timestep as a ``(B,)`` tensor on ``device`` (``None`` for a model without time conditioning)."""
    if config.time_embedding is None:
        if timestep is not None:
            raise InputError("this model has no time conditioning (time_embedding=None); call it without timestep.")
        return None
    if timestep is None:
        raise InputError("this model is time-conditioned: pass timestep (a number, a 0-d tensor or a (B,) tensor).")
    if isinstance(timestep, numbers.Number) and not isinstance(timestep, bool):
        timestep = torch.tensor(timestep)  # on the CPU first, where its value is checked for free
    if not isinstance(timestep, torch.Tensor):
        raise InputTypeError(f"timestep must be a number or a tensor; got {type(timestep).__name__}.")
    if timestep.dtype == torch.bool or timestep.is_complex():
        raise InputTypeError(f"timestep must be an integer or floating tensor; got dtype {timestep.dtype}.")
    check_timestep_values(timestep)  # where the caller holds it: before a copy to the model's device
    t = timestep.to(device)
    if t.ndim == 0 or t.shape == (1,):
        t = t.reshape(1).expand(batch)
    if t.shape != (batch,):
        raise InputError(f"timestep must be a scalar or have shape ({batch},) for a batch of {batch}; got shape {tuple(t.shape)}.")
    return t


def check_timestep_values(t: torch.Tensor) -> None:
    """Timesteps are finite, and integer ones (indices into a noise schedule) are not negative. Checked where it is
    free, on the CPU (a number, or a tensor the caller holds there); on an accelerator the check would wait for the
    device at every denoising step, so timesteps already there (a scheduler's, in the pipelines and the training
    loop) pass unread, as they do under ``torch.compile``, where a value-dependent branch would break the graph."""
    if t.device.type != "cpu" or torch.compiler.is_compiling():
        return
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise InputError(f"timestep must be finite; got {t.tolist()}.")
    if not t.is_floating_point() and (t < 0).any():
        raise InputError(f"integer timesteps index the noise schedule from 0 to T - 1; got {t.tolist()}.")


def check_conditioning(config, class_labels, encoder_hidden_states, batch: int, encoder_attention_mask=None) -> None:
    """Class labels and cross-attention context are present exactly when the model uses them, well shaped;
    a context mask is ``(B, L)`` for a ``(B, L, C)`` context."""
    _check_class_labels(config, class_labels, batch)
    _check_context(config, encoder_hidden_states, batch)
    if encoder_attention_mask is not None:
        _check_context_mask(encoder_attention_mask, encoder_hidden_states)


def _check_class_labels(config, class_labels, batch: int) -> None:
    n = config.num_class_labels
    if n is None and class_labels is not None:
        raise InputError("this model is not class-conditional (num_class_labels=None); call it without class_labels.")
    if n is None:
        return
    if class_labels is None:
        null = "" if null_label(config) is None else f" (the null label is {null_label(config)})"
        raise InputError(f"this model is class-conditional: pass class_labels, a (B,) integer tensor in [0, {n}){null}.")
    if not isinstance(class_labels, torch.Tensor) or class_labels.is_floating_point() or class_labels.dtype == torch.bool:
        raise InputTypeError(f"class_labels must be an integer tensor of shape ({batch},).")
    if class_labels.shape != (batch,):
        raise InputError(f"class_labels must have shape ({batch},); got {tuple(class_labels.shape)}.")
    top = class_table_size(config)
    # Checked eagerly on CPU only: reading GPU values would synchronise every forward, and a
    # value-dependent branch would break a torch.compile graph.
    on_cpu = not torch.compiler.is_compiling() and class_labels.device.type == "cpu" and len(class_labels)
    if on_cpu and (class_labels.min() < 0 or class_labels.max() >= top):
        raise InputError(f"class_labels must lie in [0, {top}); got values {class_labels.min().item()}..{class_labels.max().item()}.")


def _check_context(config, context, batch: int) -> None:
    width = config.context_dim
    if width is None:
        if context is not None:
            raise InputError("this model has no cross-attention; call it without encoder_hidden_states.")
        return
    if context is None:
        raise InputError(f"this model cross-attends: pass encoder_hidden_states of shape (B, L, {width}).")
    if not isinstance(context, torch.Tensor) or not context.is_floating_point():
        raise InputTypeError("encoder_hidden_states must be a floating-point tensor of shape (B, L, context_dim).")
    if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != width:
        raise InputError(f"encoder_hidden_states must have shape ({batch}, L, {width}); got {tuple(context.shape)}.")


def _check_context_mask(mask, context) -> None:
    if context is None:
        raise InputError("encoder_attention_mask masks encoder_hidden_states; pass the context too (or leave the mask out).")
    if not isinstance(mask, torch.Tensor) or mask.is_complex():
        raise InputTypeError("encoder_attention_mask must be a tensor of shape (B, L): 1 or True to attend, 0 or False to ignore.")
    if tuple(mask.shape) != tuple(context.shape[:2]):
        raise InputError(f"encoder_attention_mask must have shape {tuple(context.shape[:2])}, one entry per context token; "
                         f"got {tuple(mask.shape)}.")
