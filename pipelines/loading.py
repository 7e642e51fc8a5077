"""Open a saved model as a pipeline: a pipeline folder, a bare U-Net folder or a single weights file."""

from __future__ import annotations

import os
from pathlib import Path

from diffusers.schedulers.scheduling_utils import SchedulerMixin

from unet_diffusion.errors import InputError
from unet_diffusion.hub import OUR_CLASS, read_json, resolve, source_kind
from unet_diffusion.loading import load_unet
from unet_diffusion.weights import check_json_files, read_sampling_defaults, read_scheduler_config

from .samplers import default_scheduler, scheduler_class
from .sampling import DenoisePipeline
from .segmentation import SegmentationPipeline

PIPELINE_CLASSES = {
    "sample": ("DenoisePipeline", "DDPMPipeline", "DDIMPipeline"),
    "segment": ("SegmentationPipeline",),
}


def _pipeline_folder(path: Path, task: str) -> bool:
    """Whether ``path`` is a pipeline folder for ``task``; raises if it is one for another task."""
    kind = source_kind(path)
    if kind not in ("pipeline", "diffusers-pipeline"):
        return False
    check_json_files(path)  # every config of the folder, before diffusers reads them
    info = read_json(path / "model_index.json")
    name = info.get("_class_name")
    if name not in PIPELINE_CLASSES[task]:
        other = next((t for t, names in PIPELINE_CLASSES.items() if name in names), None)
        hint = f"; use `unet-diffusion {other}`" if other else ""
        raise InputError(f"{path} holds a {name}, which does not {task}{hint}.")
    unet_entry = info.get("unet", [None, None])
    if unet_entry[1] != OUR_CLASS and not (task == "sample" and kind == "diffusers-pipeline"):
        raise InputError(
            f"the U-Net of {path} is a {unet_entry[0]} {unet_entry[1]}, not a unet_diffusion UNet; convert it first "
            "(see 'Loading diffusers checkpoints' in the README)."
        )
    return True


def load_denoise_pipeline(path: str | os.PathLike, prediction_type: str | None = None, variant: str | None = None) -> DenoisePipeline:
    """A ``DenoisePipeline`` from a pipeline folder, or from a bare U-Net on ``default_scheduler()``.

    ``prediction_type`` (epsilon / v_prediction / sample) says what a bare U-Net was trained to
    predict; for a pipeline folder it overrides what the saved scheduler says. ``variant`` (e.g.
    ``"fp16"``) loads the weights saved with ``save_pretrained(..., variant=...)``.
    """
    path = resolve(path)
    if _pipeline_folder(path, "sample"):
        pipe = DenoisePipeline.from_pretrained(path, variant=variant)
        if prediction_type is not None and prediction_type != pipe.scheduler.config.prediction_type:
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction_type)
        return pipe
    sampling = read_sampling_defaults(path) if source_kind(path) == "weights" else None
    return DenoisePipeline(unet=load_unet(path, variant), scheduler=stored_scheduler(path, prediction_type), sampling=sampling)


def stored_scheduler(path: Path, prediction_type: str | None = None) -> SchedulerMixin:
    """The training schedule saved with a weights file (``save_weights(..., scheduler_config=)``), else ``default_scheduler()``.

    ``prediction_type`` overrides what was saved.
    """
    stored = read_scheduler_config(path) if source_kind(path) == "weights" else None
    if stored is None:
        return default_scheduler(prediction_type or "epsilon")
    overrides = {"prediction_type": prediction_type} if prediction_type else {}
    return scheduler_class(stored.get("_class_name", "DDPMScheduler"), str(path)).from_config(stored, **overrides)


def load_segmentation_pipeline(path: str | os.PathLike, variant: str | None = None) -> SegmentationPipeline:
    """A ``SegmentationPipeline`` from a pipeline folder, or from a bare U-Net (pixels fed in [0, 1]);
    ``variant`` as in ``load_denoise_pipeline``."""
    path = resolve(path)
    if _pipeline_folder(path, "segment"):
        return SegmentationPipeline.from_pretrained(path, variant=variant)
    return SegmentationPipeline(unet=load_unet(path, variant))
