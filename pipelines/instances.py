"""Objects of one class, each with its own label: a seeded watershed over the class's probability map.

The connected components of a mask merge two cells wherever one pixel of the membrane between them
is missed. Growing each object instead from a confident core (probability >= ``seed_threshold``)
over the relief ``1 - p`` lets neighbouring cores meet on the membrane's ridge, so a gap no longer
joins them; the mask still decides which pixels belong to the class at all. On ISBI 2012 (pairs
20-24 held out) this halves the Rand error of the same probabilities (see the README's table).
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy import ndimage

from unet_diffusion.errors import InputError

RELIEF_LEVELS = 65535  # watershed_ift floods integer reliefs: p in [0, 1] to uint16 steps


def check_instance_options(seed_threshold, min_seed_size) -> None:
    """One line for options ``label_instances`` cannot use."""
    if isinstance(seed_threshold, bool) or not isinstance(seed_threshold, numbers.Real) or not 0 < seed_threshold < 1:
        raise InputError(f"seed_threshold must be a number strictly between 0 and 1; got {seed_threshold!r}.")
    if isinstance(min_seed_size, bool) or not isinstance(min_seed_size, int) or min_seed_size < 1:
        raise InputError(f"min_seed_size must be a positive int (pixels); got {min_seed_size!r}.")


def label_instances(probability: np.ndarray, mask: np.ndarray, *, seed_threshold: float = 0.9,
                    min_seed_size: int = 10) -> np.ndarray:
    """Label the objects of ``mask``: 0 off the mask, 1..N one object each (int32, the shape of ``mask``).

    Args:
        probability: the class's probability per pixel (any number of axes), in [0, 1].
        mask: where the class is (bool, same shape): the pixels that get a label.
        seed_threshold: object cores are the connected regions of ``probability >= seed_threshold``.
        min_seed_size: cores smaller than this many pixels are noise, not objects.

    Each core floods the relief ``1 - probability`` (scipy's ``watershed_ift``, face-connected); a
    connected part of the mask that holds no core becomes an object of its own.
    """
    check_instance_options(seed_threshold, min_seed_size)
    probability, mask = np.asarray(probability, dtype=np.float64), np.asarray(mask, dtype=bool)
    if probability.shape != mask.shape:
        raise InputError(f"probability and mask must have the same shape; got {probability.shape} and {mask.shape}.")
    cores, _ = ndimage.label((probability >= seed_threshold) & mask)
    core_sizes = np.bincount(cores.ravel())
    cores[(core_sizes < min_seed_size)[cores]] = 0
    parts, _ = ndimage.label(mask)
    unseeded = mask & ~np.isin(parts, np.unique(parts[cores > 0]))
    markers, core_count = ndimage.label(cores > 0)
    markers[unseeded] = parts[unseeded] + core_count
    relief = np.round((1.0 - np.clip(probability, 0.0, 1.0)) * RELIEF_LEVELS).astype(np.uint16)
    flooded = ndimage.watershed_ift(relief, markers.astype(np.int32))
    labels = np.where(mask, flooded, 0)
    return np.searchsorted(np.union1d([0], labels), labels).astype(np.int32)  # 0 stays 0, the objects become 1..N
