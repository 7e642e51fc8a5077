"""What an evaluation reports: Dice, IoU and pixel error of a segmenter, the validation loss of a denoiser
by timestep range, and the names of both (``train.best_metric`` is checked against them as the config is read).
"""

from __future__ import annotations

import torch

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


def class_stats(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class counts ``(K, 3)``: intersection, predicted pixels, true pixels (hard argmax)."""
    pred = logits.argmax(dim=1)
    rows = []
    for k in range(num_classes):
        p, t = pred == k, target == k
        rows.append(torch.stack([(p & t).sum(), p.sum(), t.sum()]))
    return torch.stack(rows).double()


def metrics_from_stats(stats: torch.Tensor, names: list[str]) -> dict:
    """Dice, IoU (per class and their means over classes present) and pixel error from ``class_stats`` sums."""
    inter, pred, true = stats[:, 0], stats[:, 1], stats[:, 2]
    present = (pred + true) > 0
    dice = torch.where(present, 2 * inter / (pred + true).clamp_min(1), torch.ones_like(inter))
    iou = torch.where(present, inter / (pred + true - inter).clamp_min(1), torch.ones_like(inter))
    out = {
        "dice": dice[present].mean().item(),
        "iou": iou[present].mean().item(),
        "pixel_error": 1 - (inter.sum() / true.sum().clamp_min(1)).item(),
    }
    for k, name in enumerate(names):
        out[f"dice_{name}"] = dice[k].item()
        out[f"iou_{name}"] = iou[k].item()
    return out


def segmentation_metric_names(names: list[str]) -> list[str]:
    """What a segmenter's evaluation reports (``metrics_from_stats``'s keys) for classes named ``names``."""
    return list(metrics_from_stats(torch.zeros(len(names), 3), names))
