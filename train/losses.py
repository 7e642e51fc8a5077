"""Losses: segmentation cross-entropy / Dice, the U-Net paper's boundary weight map, min-SNR-gamma.

Segmentation losses take logits ``(B, K, H, W)``, integer targets ``(B, H, W)`` and optional
per-pixel weights ``(B, H, W)`` (volumes: one more spatial axis everywhere) (the boundary weight map, and zeros where an augmentation left no
label, such as the corners of a rotation).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from unet_diffusion.errors import InputError


# ---------------------------------------------------------------------------- segmentation losses
def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    pixel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean of the per-pixel cross-entropy: sum(w * ce) / sum(w).

    The weight of a pixel is ``class_weights[target] * pixel_weights``; with class weights alone this
    equals ``F.cross_entropy(logits, target, weight=class_weights)``.
    """
    ce = F.cross_entropy(logits.float(), target, reduction="none")  # (B, H, W)
    weight = torch.ones_like(ce)
    if class_weights is not None:
        weight = weight * class_weights.to(ce)[target]
    if pixel_weights is not None:
        weight = weight * pixel_weights.to(ce)
    return (weight * ce).sum() / weight.sum().clamp_min(1e-12)


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    pixel_weights: torch.Tensor | None = None,
    smooth: float = 1.0,
) -> torch.Tensor:
    """Soft Dice loss, 1 - mean over classes of (2 |P.G| + s) / (|P| + |G| + s), over the whole batch.

    ``P`` are the softmax probabilities, ``G`` the one-hot targets; pixels with weight 0 are left out
    (any positive weight counts as 1: Dice is a set overlap, the boundary map does not apply).
    """
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)                                          # (B, K, H, W) (or (B, K, D, H, W))
    onehot = F.one_hot(target, num_classes).movedim(-1, 1).to(probs)               # (B, K, H, W)
    if pixel_weights is not None:
        keep = (pixel_weights > 0).to(probs).unsqueeze(1)
        probs, onehot = probs * keep, onehot * keep
    axes = (0, *range(2, probs.ndim))  # all but the class axis
    intersection = (probs * onehot).sum(axes)
    total = probs.sum(axes) + onehot.sum(axes)
    dice = (2 * intersection + smooth) / (total + smooth)                          # (K,)
    return 1 - dice.mean()


def ce_dice_loss(logits, target, class_weights=None, pixel_weights=None, dice_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy plus ``dice_weight`` times the Dice loss."""
    return cross_entropy(logits, target, class_weights, pixel_weights) + dice_weight * dice_loss(logits, target, pixel_weights)


# ---------------------------------------------------------------------------- boundary weight map
def class_balance_weights(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """w_c(x): each pixel weighted by N / (K_present * count of its class), so every class present weighs the same in total."""
    counts = np.bincount(mask.ravel(), minlength=num_classes).astype(np.float64)
    present = counts > 0
    per_class = np.zeros(num_classes)
    per_class[present] = mask.size / (present.sum() * counts[present])
    return per_class[mask]


def boundary_weight_map(
    mask: np.ndarray,
    object_class: int = 1,
    w0: float = 10.0,
    sigma: float = 5.0,
    num_classes: int | None = None,
    balance_classes: bool = True,
) -> np.ndarray:
    """The U-Net paper's weight map w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)).

    Objects are the connected regions (4-connected) of ``object_class`` in the integer ``mask``
    ``(H, W)``; d1 and d2 are the Euclidean distances to the nearest and the second-nearest object.
    Where fewer than two objects exist the border term is 0. w_c balances class frequencies
    (``balance_classes``), otherwise it is 1.

    Each object's distance transform is computed in a window around it, of margin
    5 * sigma: beyond that d1 + d2 > 5 sigma and the border term is below w0 * exp(-12.5) ~ 4e-6 * w0,
    which is set to 0. This keeps images with hundreds of cells fast.
    """
    mask = np.asarray(mask)
    num_classes = num_classes or int(mask.max()) + 1
    wc = class_balance_weights(mask, num_classes) if balance_classes else np.ones(mask.shape)
    labels, count = ndimage.label(mask == object_class)
    if count < 2 or w0 == 0:
        return wc.astype(np.float32)
    height, width = mask.shape
    margin = int(np.ceil(5 * sigma)) + 1
    d1 = np.full(mask.shape, np.inf)
    d2 = np.full(mask.shape, np.inf)
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        top, bottom = max(region[0].start - margin, 0), min(region[0].stop + margin, height)
        left, right = max(region[1].start - margin, 0), min(region[1].stop + margin, width)
        window = labels[top:bottom, left:right] == index
        distance = ndimage.distance_transform_edt(~window)  # distance of each pixel to this object
        a, b = d1[top:bottom, left:right], d2[top:bottom, left:right]
        # Keep the two smallest distances seen so far.
        b[:] = np.minimum(b, np.maximum(a, distance))
        a[:] = np.minimum(a, distance)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    return (wc + border).astype(np.float32)


# ---------------------------------------------------------------------------- diffusion loss weights
def min_snr_weights(snr: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023) for an MSE on the given prediction target.

    The weight on the x0 error is min(SNR, gamma); expressed for each target it is
    min(SNR, gamma) / SNR for epsilon, min(SNR, gamma) / (SNR + 1) for v, and min(SNR, gamma) for x0.
    At SNR = 0 (a zero-terminal-SNR schedule) the epsilon weight takes its limit, 1.
    """
    clipped = torch.clamp(snr, max=gamma)
    if prediction == "epsilon":
        return torch.where(snr > 0, clipped / snr.clamp_min(1e-20), torch.ones_like(snr))
    if prediction == "v":
        return clipped / (snr + 1)
    if prediction == "sample":
        return clipped
    raise InputError(f"prediction must be 'epsilon', 'v' or 'sample'; got {prediction!r}.")
