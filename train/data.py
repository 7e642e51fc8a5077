"""Examples: where they come from, how they are checked, split, ordered and batched.

A *source* reads raw examples (a PIL image, and a mask, a class label or a context when there are
some) from the built-in synthetic shapes, a Hugging Face ``datasets`` dataset, or folders of
image/mask pairs; or volumes and their label volumes (NumPy arrays, or stacks of image slices).
``Examples`` turns them into tensors with the task's ``prepare``.

Every random draw for an example (augmentation, noise, timestep, condition dropout) comes from a
generator seeded by (seed, epoch, index). So the batches of a run are the same on any number of
processes and with any number of loader workers, and resuming needs no data-loader state: the
order sampler simply starts at the right micro-batch.
"""

from __future__ import annotations

import glob
import io
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from pipelines.images import image_files, load_array
from unet_diffusion.errors import InputError
from unet_diffusion.inputs import model_dims

from .config import Config, DataConfig, expand_path, model_fields


class BadImageError(InputError):
    """An image or mask could not be read; the message names it."""


@dataclass
class RawExample:
    """One example as read from its source."""

    image: Image.Image | np.ndarray     # a PIL image; a volume: float32 (C, D, H, W) in [0, 1]
    mask: np.ndarray | None = None      # (H, W) integer class indices ((D, H, W) for a volume)
    label: int | None = None
    context: np.ndarray | None = None   # (L, D)


# ---------------------------------------------------------------------------- decoding
def _open_image(data: bytes | str | Path, name: str, mode: str | None) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        image.load()
    except Exception as err:  # PIL raises many types for broken files
        raise BadImageError(f"cannot read image {name}: {err}") from err
    return image.convert(mode) if mode else image


def _mask_classes(image: Image.Image | np.ndarray, name: str, mask_values: list | None) -> np.ndarray:
    """Class index per pixel from a mask image (or per voxel from a label array); values are mapped through ``mask_values``."""
    if isinstance(image, Image.Image) and image.mode in ("RGB", "RGBA", "LA"):
        image = image.convert("L")
    array = np.array(image)
    if mask_values is None:
        if array.min() < 0:
            raise BadImageError(f"mask {name} has negative values; masks hold class indices 0..K-1 (or set data.mask_values).")
        return array.astype(np.int64)
    classes = np.full(array.shape, -1, dtype=np.int64)
    for index, value in enumerate(mask_values):
        classes[array == value] = index
    if (classes < 0).any():
        stray = np.unique(array[classes < 0])[:10].tolist()
        raise BadImageError(f"mask {name} has pixel values {stray} that are not in data.mask_values {mask_values}.")
    return classes


# ---------------------------------------------------------------------------- sources
class SyntheticShapes:
    """Built-in data: filled circles, squares and triangles, drawn on the fly from the index.

    Denoising (``masks=False``): one coloured shape on a dark background; the class label is the
    shape (0 circle, 1 square, 2 triangle) and the context is two one-hot tokens (shape, colour).
    Segmentation (``masks=True``): several shapes of random brightness on a noisy background, with
    the mask 1 inside any shape, 0 outside.
    """

    COLORS = np.array([[230, 60, 50], [60, 200, 80], [60, 110, 235], [240, 210, 60]], dtype=np.float32)
    KINDS = ("circle", "square", "triangle")
    CONTEXT_DIM = 8

    def __init__(self, size: int, count: int, channels: int = 3, masks: bool = False, seed: int = 0):
        self.size, self.count, self.channels, self.masks, self.seed = size, count, channels, masks, seed

    def __len__(self) -> int:
        return self.count

    def name(self, index: int) -> str:
        return f"synthetic shape #{index}"

    def _shape(self, rng: np.random.Generator, kind: int, radius: float) -> np.ndarray:
        s = self.size
        cy, cx = rng.uniform(radius, s - radius, size=2)
        y, x = np.mgrid[0:s, 0:s] + 0.5
        if kind == 0:
            return (y - cy) ** 2 + (x - cx) ** 2 <= radius**2
        if kind == 1:
            return (np.abs(y - cy) <= radius * 0.85) & (np.abs(x - cx) <= radius * 0.85)
        # An upward triangle: below the apex, above the base, inside the two sloping sides.
        dy = y - (cy - radius)
        return (dy >= 0) & (y <= cy + radius * 0.8) & (np.abs(x - cx) <= dy * 0.6)

    def load(self, index: int) -> RawExample:
        rng = np.random.default_rng([self.seed, index])
        s = self.size
        if not self.masks:
            kind, color = int(rng.integers(3)), int(rng.integers(len(self.COLORS)))
            inside = self._shape(rng, kind, rng.uniform(0.25, 0.4) * s)
            image = np.full((s, s, 3), 20, dtype=np.float32)
            image[inside] = self.COLORS[color]
            context = np.zeros((2, self.CONTEXT_DIM), dtype=np.float32)
            context[0, kind] = 1
            context[1, 3 + color] = 1
            pil = Image.fromarray(image.astype(np.uint8))
            return RawExample(pil.convert("L") if self.channels == 1 else pil, label=kind, context=context)
        image = rng.normal(0.3, 0.08, size=(s, s)).astype(np.float32)
        mask = np.zeros((s, s), dtype=np.int64)
        for _ in range(int(rng.integers(2, 6))):
            inside = self._shape(rng, int(rng.integers(3)), rng.uniform(0.1, 0.25) * s)
            image[inside] = rng.uniform(0.55, 0.95) + rng.normal(0, 0.05, size=int(inside.sum()))
            mask[inside] = 1
        pixels = (np.clip(image, 0, 1) * 255).astype(np.uint8)
        pil = Image.fromarray(pixels)
        return RawExample(pil.convert("RGB") if self.channels == 3 else pil, mask=mask)


class DatasetsSource:
    """A Hugging Face ``datasets`` dataset: a hub name, or a builder such as ``parquet`` / ``imagefolder``."""

    def __init__(self, data: DataConfig):
        import datasets

        files = data.data_files
        if isinstance(files, str):
            files = expand_path(files)
        elif isinstance(files, list):
            files = [expand_path(f) for f in files]
        try:
            self.ds = datasets.load_dataset(expand_path(data.path), data_files=files, data_dir=expand_path(data.data_dir), split=data.split)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"cannot load dataset {data.path!r} (data_files={files!r}): {err}. For the shipped configs set "
                "UNET_DATA_DIR to the folder holding the datasets."
            ) from None
        except (datasets.exceptions.DatasetGenerationError, ValueError) as err:
            # datasets fails on parquet files without rows with errors that do not say so (an Arrow batch size of 0,
            # "corresponds to no data"); an unknown split is a ValueError too.
            if data.path == "parquet" and _parquet_rows(files) == 0:
                raise InputError(f"data.data_files={files!r}: the parquet data has no rows; give files with examples.") from None
            cause = " ".join(str(err.__cause__ or err).split())
            raise InputError(f"cannot load dataset {data.path!r} (data_files={files!r}, split={data.split!r}): {cause}") from None
        self.label = f"{data.path}[{data.split}]"
        if len(self.ds) == 0:
            raise InputError(f"{self.label} (data_files={files!r}) has no rows; give data with examples, or another data.split.")
        columns = self.ds.column_names
        for key in ("image_column", "label_column", "mask_column", "context_column"):
            column = getattr(data, key)
            if column is not None and column not in columns:
                raise InputError(f"data.{key}={column!r} is not a column of {self.label}; its columns are {columns}.")
        for column in (data.image_column, data.mask_column):
            if column is not None and isinstance(self.ds.features[column], datasets.Image):
                # Decode ourselves, so that a broken image is named instead of failing deep inside datasets.
                self.ds = self.ds.cast_column(column, datasets.Image(decode=False))
        self.data = data

    def __len__(self) -> int:
        return len(self.ds)

    def name(self, index: int) -> str:
        return f"{self.label} row {index}"

    def _image(self, value, index: int, mode: str | None) -> Image.Image:
        if isinstance(value, Image.Image):
            return value.convert(mode) if mode else value
        if isinstance(value, dict):
            where = value.get("path") or ""
            name = f"{self.name(index)} ({where})" if where else self.name(index)
            return _open_image(value["bytes"] if value.get("bytes") else value["path"], name, mode)
        return _open_image(value, self.name(index), mode)

    def load(self, index: int) -> RawExample:
        row = self.ds[index]
        d = self.data
        mode = "L" if d.channels == 1 else "RGB"
        image = self._image(row[d.image_column], index, mode)
        mask = None
        if d.mask_column:
            mask_image = self._image(row[d.mask_column], index, None)
            mask = _mask_classes(mask_image, f"{self.name(index)} ({d.mask_column})", d.mask_values)
        label = int(row[d.label_column]) if d.label_column else None
        context = np.asarray(row[d.context_column], dtype=np.float32) if d.context_column else None
        return RawExample(image, mask=mask, label=label, context=context)


def _parquet_rows(files: str | list | dict | None) -> int | None:
    """The rows of the local parquet files (or globs) named, from their footers; ``None`` when that cannot be told."""
    import pyarrow.parquet as pq

    patterns = [files] if isinstance(files, str) else files if isinstance(files, list) else []
    paths = [path for pattern in patterns for path in sorted(glob.glob(pattern))]
    try:
        return sum(pq.read_metadata(path).num_rows for path in paths) if paths else None
    except Exception:  # an unreadable file: datasets' own error says more
        return None


class ImageMaskPairs:
    """Folders of images and masks, paired by file stem (``image/07.png`` with ``label/07.png``)."""

    def __init__(self, data: DataConfig):
        image_dir, mask_dir = Path(expand_path(data.image_dir)), Path(expand_path(data.mask_dir))
        for key, folder in (("image_dir", image_dir), ("mask_dir", mask_dir)):
            if not folder.is_dir():
                raise FileNotFoundError(f"data.{key} {folder} is not a folder (set UNET_DATA_DIR if the config uses it).")
        images, masks = ({p.stem: p for p in image_files(folder)} for folder in (image_dir, mask_dir))
        unpaired = sorted(set(images) ^ set(masks))
        if unpaired:
            raise InputError(f"images and masks must pair up by file name; without a partner: {unpaired[:10]} "
                             f"(in {image_dir} / {mask_dir}).")
        self.pairs = [(images[k], masks[k]) for k in sorted(images)]
        self.data = data

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return str(self.pairs[index][0])

    def load(self, index: int) -> RawExample:
        image_path, mask_path = self.pairs[index]
        image = _open_image(image_path, str(image_path), "L" if self.data.channels == 1 else "RGB")
        mask = _mask_classes(_open_image(mask_path, str(mask_path), None), str(mask_path), self.data.mask_values)
        if mask.shape != (image.height, image.width):
            raise BadImageError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image is {image.width}x{image.height}.")
        return RawExample(image, mask=mask)


VOLUME_SUFFIXES = (".npy", ".npz")


def _read_volume(path: Path, name: str) -> np.ndarray:
    """A ``.npy`` array, or the one array of an ``.npz`` file, never unpickled."""
    if path.suffix.lower() == ".npy":
        return load_array(path)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if len(arrays.files) != 1:
                raise BadImageError(f"{name} {path} holds {len(arrays.files)} arrays ({arrays.files}); a volume file holds one.")
            return arrays[arrays.files[0]]
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise BadImageError(f"cannot read {name} {path} as a NumPy archive ({err}).") from err


def _stack_slices(folder: Path) -> np.ndarray:
    """The image slices of a folder, in name order, as one ``(D, H, W)`` (or ``(D, H, W, C)``) volume."""
    slices = [np.asarray(_open_image(path, str(path), None)) for path in image_files(folder)]
    if len({s.shape for s in slices}) > 1:
        raise BadImageError(f"the slices in {folder} differ in size ({sorted({s.shape for s in slices})}); a volume needs one.")
    return np.stack(slices)


class Volumes:
    """Volumes and their label volumes: ``.npy`` / ``.npz`` files in two folders paired by file stem, or the image
    slices of each folder stacked in name order into one volume (an EM stack such as ISBI 2012).

    A volume file holds ``(D, H, W)`` (one channel) or ``(C, D, H, W)``; uint8 values are scaled to [0, 1], floats
    taken as they are. Labels are integer classes per voxel (mapped through ``data.mask_values`` when set).
    ``data.split_depth_at`` cuts every volume into parts along the depth, each part an example, so that one part
    of a single stack can be held out for validation (``data.val_size: [1]``).
    """

    def __init__(self, data: DataConfig):
        folders = [Path(expand_path(data.image_dir)), Path(expand_path(data.mask_dir))]
        for key, folder in zip(("image_dir", "mask_dir"), folders):
            if not folder.is_dir():
                raise FileNotFoundError(f"data.{key} {folder} is not a folder (set UNET_DATA_DIR if the config uses it).")
        if any(p.suffix.lower() in VOLUME_SUFFIXES for p in folders[0].iterdir()):
            images, masks = ({p.stem: p for p in image_files(folder, VOLUME_SUFFIXES)} for folder in folders)
            unpaired = sorted(set(images) ^ set(masks))
            if unpaired:
                raise InputError(f"volumes and label volumes must pair up by file name; without a partner: {unpaired[:10]}.")
            self.volumes = [(images[k], masks[k]) for k in sorted(images)]
        else:
            self.volumes = [tuple(folders)]  # one volume of slices
        cuts = sorted(set(data.split_depth_at or []))
        bounds = [0, *cuts, None]
        self.parts = [(v, start, stop) for v in range(len(self.volumes)) for start, stop in zip(bounds, bounds[1:])]
        self.data = data
        self._load = lru_cache(maxsize=8)(self._read)  # volumes are read once, then cut into parts

    def __len__(self) -> int:
        return len(self.parts)

    def name(self, index: int) -> str:
        volume, start, stop = self.parts[index]
        where = f" slices {start}..{'end' if stop is None else stop - 1}" if len(self.parts) > len(self.volumes) else ""
        return f"{self.volumes[volume][0]}{where}"

    def _read(self, volume: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.volumes[volume]
        read = _read_volume if image_path.is_file() else lambda path, name: _stack_slices(path)
        image, labels = read(image_path, "volume"), read(mask_path, "label volume")
        if image_path.is_dir() and image.ndim == 4:
            image = np.moveaxis(image, -1, 0)  # slices of RGB images: (D, H, W, C) -> (C, D, H, W)
        image = image[None] if image.ndim == 3 else image
        if image.ndim != 4 or labels.ndim != 3 or image.shape[1:] != labels.shape:
            raise BadImageError(f"volume {image_path} is {image.shape} and its labels {mask_path} are {labels.shape}; "
                                "expected (D, H, W) or (C, D, H, W) with (D, H, W) labels of the same size.")
        if image.shape[0] != self.data.channels:
            raise BadImageError(f"volume {image_path} has {image.shape[0]} channels but data.channels is {self.data.channels}.")
        pixels = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
        return pixels, _mask_classes(labels, str(mask_path), self.data.mask_values)

    def load(self, index: int) -> RawExample:
        volume, start, stop = self.parts[index]
        image, labels = self._load(volume)
        if not 0 <= start < (len(labels) if stop is None else min(stop, len(labels))):
            raise InputError(f"data.split_depth_at {self.data.split_depth_at} cuts outside the {len(labels)} slices of {self.name(index)}.")
        return RawExample(image[:, start:stop], mask=labels[start:stop])


class Arrays:
    """Signals or volumes for a denoiser, as one NumPy file: a ``.npy`` array of examples, or an ``.npz`` archive with
    the examples under ``data.image_column`` and, for class-conditional runs, integer labels under ``data.label_column``.

    The examples array is ``(N, L)`` / ``(N, C, L)`` (signals) or ``(N, D, H, W)`` / ``(N, C, D, H, W)`` (volumes), the
    layout with one channel without its axis; uint8 values are scaled to [-1, 1], floats must already lie in it.
    """

    def __init__(self, data: DataConfig, dims: int):
        path = Path(expand_path(data.data_files))
        if not path.is_file():
            raise FileNotFoundError(f"data.data_files {path} is not a file (set UNET_DATA_DIR if the config uses it).")
        self.path, labels = str(path), None
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                for key in (data.image_column, data.label_column):
                    if key is not None and key not in arrays.files:
                        raise InputError(f"{path} has no array {key!r} (data.image_column / data.label_column); it has {arrays.files}.")
                examples = arrays[data.image_column]
                labels = arrays[data.label_column] if data.label_column else None
        elif data.label_column:
            raise InputError(f"data.label_column={data.label_column!r} names an array of an .npz archive; {path} is a single "
                             "array. Save examples and labels together with numpy.savez.")
        else:
            examples = load_array(path)
        if examples.ndim == dims + 1:
            examples = examples[:, None]  # one channel
        if examples.ndim != dims + 2:
            raise InputError(f"{path} holds {examples.shape}; a {dims}D model trains on (N, C, ...) arrays with {dims} spatial axes.")
        if len(examples) == 0:
            raise InputError(f"{path} holds no examples (its array is {examples.shape}); give an array of at least one.")
        if labels is not None and labels.shape != (len(examples),):
            raise InputError(f"the labels in {path} are {labels.shape}; expected one integer per example, ({len(examples)},).")
        if examples.dtype == np.uint8:
            examples = examples.astype(np.float32) / 127.5 - 1
        elif not (np.issubdtype(examples.dtype, np.floating) and -1.0001 <= examples.min() and examples.max() <= 1.0001):
            raise InputError(f"the examples in {path} must be uint8 or floats in [-1, 1] (the denoiser's range); got {examples.dtype} "
                             f"values {examples.min():.3g}..{examples.max():.3g}. Scale them first.")
        self.examples, self.labels = examples.astype(np.float32), labels

    def __len__(self) -> int:
        return len(self.examples)

    def name(self, index: int) -> str:
        return f"{self.path}[{index}]"

    def load(self, index: int) -> RawExample:
        label = None if self.labels is None else int(self.labels[index])
        return RawExample(self.examples[index], label=label)


def open_source(config: Config):
    """The raw-example source named by ``config.data``."""
    data = config.data
    if data.source == "synthetic":
        size = data.image_size
        return SyntheticShapes(size, data.synthetic_size, data.channels, masks=config.task == "segmentation", seed=config.train.seed)
    if data.source == "datasets":
        return DatasetsSource(data)
    if data.source == "volumes":
        return Volumes(data)
    if data.source == "arrays":
        fields = model_fields(config) or {}  # None: a wrong model section, which building the model reports
        return Arrays(data, dims=model_dims(fields))
    return ImageMaskPairs(data)


# ---------------------------------------------------------------------------- checks and splits
def check_images(source, indices: list[int], on_bad: str, log: Callable[[str], None] = print) -> list[int]:
    """Read every example once. A bad one raises BadImageError naming it, or with ``on_bad="skip"`` is
    left out and counted. Returns the indices that read."""
    good, bad = [], []
    for index in indices:
        try:
            source.load(index)
            good.append(index)
        except BadImageError as err:
            if on_bad == "error":
                raise BadImageError(f"{err} (set data.on_bad_image=skip to leave bad images out)") from None
            bad.append(str(err))
    if bad:
        log(f"skipped {len(bad)} unreadable example(s) of {len(indices)}; first: {bad[0]}")
    if not good:
        raise InputError("no readable examples are left.")
    return good


def split_indices(indices: list[int], val_size: float | list[int], seed: int) -> tuple[list[int], list[int]]:
    """Hold out ``val_size`` (a fraction < 1, or a count) of the indices, chosen by ``seed``; or, when
    ``val_size`` is a list, exactly the examples at those positions (a fixed, stated split)."""
    if isinstance(val_size, (list, tuple)):
        bad = [k for k in val_size if not 0 <= k < len(indices)]
        if bad or len(set(val_size)) >= len(indices):
            raise InputError(f"data.val_size lists examples {list(val_size)}; positions must lie in 0..{len(indices) - 1} "
                             "and leave some examples for training.")
        held = set(val_size)
        return [i for k, i in enumerate(indices) if k not in held], [indices[k] for k in sorted(held)]
    if val_size <= 0:
        return list(indices), []
    count = int(round(val_size * len(indices))) if val_size < 1 else int(val_size)
    if not 0 < count < len(indices):
        raise InputError(f"data.val_size={val_size} leaves {len(indices) - count} of {len(indices)} examples for training.")
    order = np.random.default_rng([seed, 7]).permutation(len(indices))
    held = set(order[:count].tolist())
    train = [i for k, i in enumerate(indices) if k not in held]
    val = [indices[k] for k in sorted(held)]
    return train, val


# ---------------------------------------------------------------------------- examples and order
def example_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one example's random draws in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class Examples(Dataset):
    """Prepared examples: ``examples[(epoch, i)]`` (training) or ``examples[i]`` (evaluation, epoch 0).

    ``prepare(raw, index)`` turns a RawExample into a dict of tensors; it may draw random numbers
    from torch's global generator, which is seeded for each (epoch, index) and restored afterwards.
    With ``repeats`` every example appears that many times an epoch, each time with its own draws
    (several random crops of a few large images or volumes).
    """

    def __init__(self, source, indices: list[int], prepare: Callable[[RawExample, int], dict], seed: int, repeats: int = 1):
        self.source, self.indices, self.prepare, self.seed, self.repeats = source, list(indices), prepare, seed, repeats

    def __len__(self) -> int:
        return len(self.indices) * self.repeats

    def __getitem__(self, key) -> dict:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        repeat, position = divmod(i, len(self.indices))
        index = self.indices[position]
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed would also queue a seed for every accelerator's generator
            # (a stack trace recorded per call, 0.3 ms) and leave them changed, as fork_rng restores the CPU's alone.
            torch.default_generator.manual_seed(example_seed(self.seed, epoch * self.repeats + repeat, index))
            return self.prepare(self.source.load(index), index)


class ExampleOrder(Sampler):
    """An endless shuffled order of ``(epoch, i)`` keys for one process.

    Each epoch is a permutation of the examples seeded by (seed, epoch), cut into global batches of
    ``global_batch`` (a last partial batch is dropped); process ``rank`` of ``world`` takes its slice
    of each. Starting at micro-batch ``start`` continues an earlier run exactly.
    """

    def __init__(self, size: int, global_batch: int, rank: int, world: int, seed: int, start: int = 0):
        if global_batch % world:
            raise InputError(f"train.batch_size={global_batch} must divide evenly over {world} processes.")
        self.batches_per_epoch = size // global_batch
        if self.batches_per_epoch == 0:
            raise InputError(f"train.batch_size={global_batch} is larger than the {size} training examples.")
        self.size, self.global_batch, self.rank, self.world = size, global_batch, rank, world
        self.seed, self.start = seed, start
        self.local = global_batch // world

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, batch = divmod(self.start, self.batches_per_epoch)
        while True:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch)).tolist()
            for b in range(batch, self.batches_per_epoch):
                first = b * self.global_batch + self.rank * self.local
                for i in order[first:first + self.local]:
                    yield (epoch, i)
            epoch, batch = epoch + 1, 0

    def __len__(self) -> int:  # DataLoader asks; the order is endless
        return 2**62


def training_loader(examples: Examples, global_batch: int, rank: int, world: int, seed: int, start: int, num_workers: int) -> DataLoader:
    """An endless loader of this process's micro-batches, starting at micro-batch ``start``."""
    order = ExampleOrder(len(examples), global_batch, rank, world, seed, start)
    return DataLoader(examples, batch_size=order.local, sampler=order, num_workers=num_workers,
                      persistent_workers=num_workers > 0, drop_last=False)


def epoch_of(micro_batch: int, examples: int, global_batch: int) -> float:
    """Epochs completed after ``micro_batch`` global micro-batches."""
    return micro_batch / max(1, examples // global_batch)


__all__ = [
    "BadImageError", "DatasetsSource", "ExampleOrder", "Examples", "ImageMaskPairs", "RawExample",
    "Arrays", "SyntheticShapes", "Volumes", "check_images", "example_seed", "open_source", "split_indices", "training_loader",
]
