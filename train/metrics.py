"""What an evaluation reports, by name: a denoiser's validation loss (also by timestep range) and FID / KID, a
segmenter's Dice, IoU and pixel error. ``train.best_metric`` is checked against these as the config is read, so
this module needs no torch.
"""

from __future__ import annotations

TIMESTEP_BUCKETS = 4  # the denoising loss is also reported in this many equal ranges of timesteps


def timestep_range_names(prefix: str, num_train_timesteps: int) -> list[str]:
    """The names of the ``TIMESTEP_BUCKETS`` timestep ranges: ``loss_t0-249``, ``loss_t250-499``, ..."""
    steps, buckets = num_train_timesteps, TIMESTEP_BUCKETS
    return [f"{prefix}_t{k * steps // buckets}-{(k + 1) * steps // buckets - 1}" for k in range(buckets)]


def denoising_metric_names(num_train_timesteps: int, eval_samples: int) -> list[str]:
    """What a denoiser's evaluation reports: the validation loss, by timestep range, and FID / KID with eval_samples."""
    return ["val_loss", *timestep_range_names("val_loss", num_train_timesteps), *(["fid", "kid"] if eval_samples else [])]


def class_names(given: list | None, num_classes: int) -> list[str]:
    """The name of each class in the metrics: ``segmentation.class_names``, else class0, class1, ..."""
    return list(given or [f"class{k}" for k in range(num_classes)])


def segmentation_metric_names(names: list[str]) -> list[str]:
    """What a segmenter's evaluation reports for classes named ``names``: mean Dice and IoU over the classes present,
    the pixel error, then Dice and IoU of each class (``segmentation.metrics_from_stats`` fills them in this order)."""
    return ["dice", "iou", "pixel_error", *(f"{metric}_{name}" for name in names for metric in ("dice", "iou"))]
