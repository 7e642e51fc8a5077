"""Quality metrics of the benchmarks: the ISBI 2012 foreground-restricted Rand error, pixel error
and Dice of a segmentation, and the Fréchet distance between two sets of features.

Written here with numpy / scipy (no metric package is a dependency of the project), small enough to
check by hand; ``tests/test_bench_metrics.py`` does.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


# ---------------------------------------------------------------------------- segmentation
def cell_components(cells: np.ndarray) -> np.ndarray:
    """Connected components of a boolean cell map ``(H, W)``: 0 off the cells, 1..N on them.

    4-connectivity: a membrane one pixel wide drawn diagonally still separates two cells, which
    8-connectivity would join through the diagonal gap.
    """
    labels, _ = ndimage.label(np.asarray(cells, dtype=bool))  # scipy's default structure is the 4-neighbour cross
    return labels


def rand_error(true_labels: np.ndarray, pred_labels: np.ndarray) -> float:
    """Foreground-restricted Rand error of a labelling against the truth: ``1 - F``, in [0, 1].

    The ISBI 2012 challenge's metric (Arganda-Carreras et al. 2015, "Crowdsourcing the creation of
    image segmentation algorithms for connectomics"). Both arguments are integer label maps of the
    same shape where 0 means "boundary" and every other value names one segment (e.g. the output of
    ``cell_components``). Only pixels where the *truth* is a segment count (the truth's boundary
    pixels are ignored). With the contingency table ``p[i, j]`` = fraction of those pixels in true
    segment ``i`` and predicted segment ``j``, ``s_i`` / ``t_j`` its row / column sums::

        precision = sum p_ij^2 / sum t_j^2     (how rarely a predicted segment merges true ones)
        recall    = sum p_ij^2 / sum s_i^2     (how rarely a true segment is split)
        F         = 2 precision recall / (precision + recall)

    Predicted boundary pixels (label 0) that fall inside a true segment are each counted as a
    segment of their own (the SNEMI3D / CREMI convention), so a stray membrane inside a cell costs
    recall, and a prediction of "boundary everywhere" scores badly rather than being ignored.
    Identical segmentations (up to renaming the segments) give 0.
    """
    true_labels, pred_labels = np.asarray(true_labels), np.asarray(pred_labels)
    if true_labels.shape != pred_labels.shape:
        raise ValueError(f"label maps must have the same shape; got {true_labels.shape} and {pred_labels.shape}.")
    keep = true_labels != 0
    n = int(keep.sum())
    if n == 0:
        raise ValueError("the true labelling has no segment pixels (all 0); the Rand error is undefined.")
    true = true_labels[keep].astype(np.int64)
    pred = pred_labels[keep].astype(np.int64)
    on_boundary = pred == 0
    # Contingency counts of the (true, predicted) pairs of the pixels whose prediction is a segment.
    _, pair_counts = np.unique(np.stack([true[~on_boundary], pred[~on_boundary]]), axis=1, return_counts=True)
    _, true_counts = np.unique(true, return_counts=True)
    _, pred_counts = np.unique(pred[~on_boundary], return_counts=True)
    singletons = int(on_boundary.sum())  # each is its own predicted segment and its own pair: 1^2 apiece
    sum_p2 = (np.sum(pair_counts.astype(np.float64) ** 2) + singletons) / n**2
    sum_s2 = np.sum(true_counts.astype(np.float64) ** 2) / n**2
    sum_t2 = (np.sum(pred_counts.astype(np.float64) ** 2) + singletons) / n**2
    precision, recall = sum_p2 / sum_t2, sum_p2 / sum_s2
    return float(1.0 - 2.0 * precision * recall / (precision + recall))


def pixel_error(true_classes: np.ndarray, pred_classes: np.ndarray) -> float:
    """Fraction of pixels whose predicted class differs from the truth."""
    true_classes, pred_classes = np.asarray(true_classes), np.asarray(pred_classes)
    if true_classes.shape != pred_classes.shape:
        raise ValueError(f"class maps must have the same shape; got {true_classes.shape} and {pred_classes.shape}.")
    return float(np.mean(true_classes != pred_classes))


def dice(true_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """Dice coefficient 2|A and B| / (|A| + |B|) of two boolean masks (1 when both are empty)."""
    a, b = np.asarray(true_mask, dtype=bool), np.asarray(pred_mask, dtype=bool)
    total = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else 1.0


# ---------------------------------------------------------------------------- Fréchet distance
def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` of features ``(N, D)`` (float64, unbiased)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2; got shape {features.shape}.")
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, sigma1) and N(mu2, sigma2)::

        |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))

    the quantity FID computes on Inception features. ``tr (sigma1 sigma2)^(1/2)`` is taken as the sum
    of the square roots of the eigenvalues of the symmetric ``sigma1^(1/2) sigma2 sigma1^(1/2)``
    (similar to ``sigma1 sigma2``, so the same eigenvalues), which stays real and stable where a
    general matrix square root of a near-singular product returns complex noise.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes do not match: means {mu1.shape}, {mu2.shape}; covariances {sigma1.shape}, {sigma2.shape}.")
    values, vectors = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T          # sigma1^(1/2)
    middle = root1 @ sigma2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)


def frechet_distance_of(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets ``(N, D)``, ``(M, D)``."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))
