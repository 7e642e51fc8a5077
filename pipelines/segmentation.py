"""Segmentation inference: images of any size to per-pixel class maps and probabilities."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from unet_diffusion import UNet
from unet_diffusion.errors import InputError
from unet_diffusion.inputs import model_dims
from unet_diffusion.nd import per_channel

from .images import to_arrays, to_image_list, to_tensor
from .inference import check_finite, eval_mode, fail_if
from .instances import check_instance_options, label_instances
from .tiling import check_blend, mirror_pad, overlap_tile, sliding_window, whole_image

TTA_CHOICES = (None, False, True, "flip", "d4")
CONDITIONING = ("time_embedding", "num_class_labels", "context_dim")  # config fields of inputs other than the image


def conditioned_through(config) -> list[str]:
    """The conditioning a U-Net config asks for; a segmenter of the pipeline (and of training) takes only the image."""
    return [field for field in CONDITIONING if config[field] is not None]


@dataclass
class SegmentationOutput(BaseOutput):
    """What ``SegmentationPipeline`` returns.

    ``masks``: ``(B, H, W)`` int64 class indices (the most probable class, or with ``threshold`` class 1
    where its probability reaches it); ``probabilities``: ``(B, K, H, W)`` per-class probabilities
    (softmax; a one-logit model gives ``[1 - p, p]``). numpy arrays or tensors, as
    ``output_type`` asks; lists of per-image arrays when the input images differ in size. 1D and 3D
    models give ``(B, L)`` / ``(B, D, H, W)`` masks and ``(B, K, L)`` / ``(B, K, D, H, W)`` probabilities.
    ``instances``: with ``instances=c``, the objects of class ``c`` labelled one by one (int32, shaped as
    ``masks``: 0 off the class, 1..N per image); ``None`` otherwise.
    """

    masks: np.ndarray | torch.Tensor | list
    probabilities: np.ndarray | torch.Tensor | list
    instances: np.ndarray | torch.Tensor | list | None = None


@dataclass(frozen=True)
class _Tiling:
    """How one call cuts its inputs: the ``__call__`` arguments of the same names."""

    tile_size: int | tuple[int, ...] | None
    overlap: int | None
    blend: str
    tiles_per_batch: int


def _dihedral(tta, dims: int = 2) -> list[tuple[int, bool]]:
    """(quarter turns, flip) pairs of the test-time augmentation: identity, flips, or all eight (in the plane of the
    last two axes: a volume turns and flips in its H-W plane; a signal can only be reversed)."""
    if tta not in TTA_CHOICES:
        raise InputError(f"tta must be False, 'flip' (4 flips), 'd4' or True (8 flips and rotations); got {tta!r}.")
    if not tta:
        return [(0, False)]
    if dims == 1:
        if tta != "flip":
            raise InputError("a 1D model can only be flipped (tta='flip': the signal and its reverse); 'd4' turns images.")
        return [(0, False), (0, True)]
    if tta == "flip":
        return [(0, False), (0, True), (2, False), (2, True)]  # identity, h-flip, both flips, v-flip
    return [(k, flip) for k in range(4) for flip in (False, True)]


def _label_objects(probability: torch.Tensor, mask: torch.Tensor, seed_threshold: float, min_seed_size: int) -> torch.Tensor:
    """``label_instances`` of every item of a batch: ``(B, ...)`` probabilities and masks to ``(B, ...)`` int32 labels."""
    labelled = [label_instances(p, m, seed_threshold=seed_threshold, min_seed_size=min_seed_size)
                for p, m in zip(probability.cpu().numpy(), mask.cpu().numpy())]
    return torch.from_numpy(np.stack(labelled)).to(probability.device)


def _gather(batches: list[torch.Tensor], output_type: str):
    """One batch as it is; batches of differently sized images as a list of per-image entries; numpy for ``"np"``."""
    if output_type == "np":
        batches = [b.cpu().numpy() for b in batches]
    return batches[0] if len(batches) == 1 else [item for batch in batches for item in batch]


class SegmentationPipeline(DiffusionPipeline):
    """Segment images of any size with a ``UNet`` whose head is ``"segment"``.

    Valid-padding models (the 2015 U-Net) use the overlap-tile strategy: the image is
    mirror-extrapolated and cut into tiles of ``tile_size`` whose outputs fit edge to edge, each
    output pixel computed with its full context. Same-padding models run on the whole image in one
    pass (padded to a size they take), or, when ``tile_size`` is given and the image is larger, as
    a sliding window with blended overlaps. ``save_pretrained`` / ``from_pretrained`` store the
    U-Net and the input normalisation in a ``model_index.json``.

    Args:
        unet: a segmentation U-Net (``head="segment"``, no time, class or context conditioning).
        image_mean, image_std: the network sees ``(pixels - mean) / std`` with pixels in [0, 1]; a
            number, or one per channel. Use what training used (the defaults leave pixels in [0, 1]).

    Example:
        >>> pipe = SegmentationPipeline(unet=UNet.from_preset("seg-small"))
        >>> out = pipe(np.random.rand(100, 120).astype("float32"))  # any size
        >>> out.masks.shape, out.probabilities.shape
        ((1, 100, 120), (1, 2, 100, 120))
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet, image_mean: float | list[float] = 0.0, image_std: float | list[float] = 1.0):
        super().__init__()
        config = unet.config
        if config.head != "segment":
            raise InputError(
                f"SegmentationPipeline needs a segmentation U-Net (head='segment'); this one has head={config.head!r}. "
                "Sample from denoisers with DenoisePipeline (or `unet-diffusion sample`)."
            )
        conditioned = conditioned_through(config)
        if conditioned:
            raise InputError(
                f"SegmentationPipeline runs unconditioned networks; this one is conditioned through {', '.join(conditioned)}. "
                "Call the model directly."
            )
        for name, value in (("image_mean", image_mean), ("image_std", image_std)):
            values = [value] if isinstance(value, (int, float)) else list(value)
            if len(values) not in (1, config.in_channels):
                raise InputError(f"{name} needs one value or {config.in_channels} (one per channel); got {value!r}.")
            if name == "image_std" and 0 in values:
                raise InputError(f"image_std must not be zero; got {value!r}.")
        self.register_modules(unet=unet)
        self.register_to_config(image_mean=image_mean, image_std=image_std)

    @torch.no_grad()
    def __call__(
        self,
        images,
        *,
        tile_size: int | tuple[int, int] | None = None,
        overlap: int | None = None,
        blend: str = "ramp",
        tta=False,
        threshold: float | None = None,
        instances: int | None = None,
        seed_threshold: float = 0.9,
        min_seed_size: int = 10,
        tiles_per_batch: int = 4,
        output_type: str = "np",
        return_dict: bool = True,
    ) -> SegmentationOutput | tuple:
        """Segment ``images``.

        Args:
            images: a PIL image, a numpy array (``(H, W)``, ``(H, W, C)`` or ``(B, H, W, C)``), a tensor
                (``(C, H, W)`` or ``(B, C, H, W)``), or a list of them; pixels in [0, 1] (floats) or
                0..255 (uint8, PIL). Sizes are free; list items may differ in size.
            tile_size: the input tile side (or ``(h, w)``). Valid padding: a size the model takes, by
                default its ``sample_size`` (572 for ``ronneberger2015``); larger tiles mean fewer
                tiles and less overlap. Same padding: ``None`` (default) runs whole images; a size
                switches to a sliding window over larger images.
            overlap: sliding window only: the overlap of neighbouring tiles (default a quarter tile).
            blend: sliding window only: how overlapping tiles are averaged: ``"ramp"`` (weights falling linearly over
                the overlap towards each tile's edges), ``"gaussian"`` (falling from each tile's centre, sigma 1/8 of
                the tile) or ``"uniform"``.
            tta: test-time augmentation, averaged over probabilities: ``"flip"`` (4 flips), ``"d4"`` or
                ``True`` (8 flips and 90-degree rotations), ``False`` (none).
            threshold: two-class models only: the mask is class 1 where its probability is at least
                ``threshold`` (strictly between 0 and 1), instead of the most probable class. 0.5 gives
                the argmax up to exact ties; higher values mark fewer class-1 pixels.
            instances: a class index: also label that class's objects one by one (``output.instances``), each
                grown by a seeded watershed from a core where its probability is at least ``seed_threshold``
                (cores under ``min_seed_size`` pixels are dropped), so that a gap in the boundary between two
                objects does not merge them (``pipelines.instances.label_instances``).
            tiles_per_batch: tiles per network call (memory against speed).
            output_type: ``"np"`` (numpy arrays) or ``"pt"`` (tensors).
            return_dict: return a ``SegmentationOutput`` or a ``(masks, probabilities[, instances])`` tuple.
        """
        transforms = _dihedral(tta, model_dims(self.unet.config))
        self._check_threshold(threshold)
        self._check_instances(instances, seed_threshold, min_seed_size)
        fail_if(
            (output_type not in ("np", "pt"), f"output_type must be 'np' or 'pt'; got {output_type!r}."),
            (not isinstance(tiles_per_batch, int) or tiles_per_batch < 1,
             f"tiles_per_batch must be a positive int; got {tiles_per_batch!r}."),
        )
        check_blend(blend)  # before any network call, tiled or not
        tiling = _Tiling(tile_size, overlap, blend, tiles_per_batch)
        channels, dims = self.unet.config.in_channels, model_dims(self.unet.config)
        if dims == 2:
            batches = [to_tensor(item, channels=channels, name="images") for item in to_image_list(images)]
        else:
            batches = to_arrays(images, dims, channels)
        check_finite(images=batches)
        if len({tuple(b.shape[1:]) for b in batches}) == 1:
            batches = [torch.cat(batches)]  # one size: one batch through the network

        masks, probabilities, objects = [], [], []
        with eval_mode(self.unet):
            for batch in batches:
                probs = self._probabilities(self._normalize(batch), transforms, tiling)
                probabilities.append(probs)
                masks.append(probs.argmax(dim=1) if threshold is None else (probs[:, 1] >= threshold).long())
                if instances is not None:
                    objects.append(_label_objects(probs[:, instances], masks[-1] == instances, seed_threshold, min_seed_size))
        self.maybe_free_model_hooks()
        output = SegmentationOutput(masks=_gather(masks, output_type), probabilities=_gather(probabilities, output_type),
                                    instances=_gather(objects, output_type) if objects else None)
        return output if return_dict else output.to_tuple()

    # ------------------------------------------------------------------------ steps
    def _check_threshold(self, threshold) -> None:
        if threshold is None:
            return
        classes = max(self.unet.config.out_channels, 2)  # one logit: two classes through a sigmoid
        fail_if(
            (classes != 2, f"threshold works on two-class models (class 1 where p(class 1) >= threshold); this one has "
                           f"{classes} classes. Leave it out to take the most probable class."),
            (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 < threshold < 1,
             f"threshold must be a number strictly between 0 and 1; got {threshold!r}."),
        )

    def _check_instances(self, instances, seed_threshold, min_seed_size) -> None:
        if instances is None:
            return
        classes = max(self.unet.config.out_channels, 2)
        fail_if((isinstance(instances, bool) or not isinstance(instances, int) or not 0 <= instances < classes,
                 f"instances must be the index of the class whose objects to label, 0..{classes - 1}; got {instances!r}."))
        check_instance_options(seed_threshold, min_seed_size)

    def _normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = per_channel(torch.tensor(self.config.image_mean, dtype=torch.float32).reshape(1, -1), pixels)
        std = per_channel(torch.tensor(self.config.image_std, dtype=torch.float32).reshape(1, -1), pixels)
        return ((pixels - mean) / std).to(device=self._execution_device, dtype=self.unet.dtype)

    def _probabilities(self, image, transforms, tiling: _Tiling) -> torch.Tensor:
        """Per-class probabilities ``(B, K, H, W)``, averaged over the test-time transforms."""
        total = None
        for turns, flip in transforms:
            x = image.flip(-1) if flip else image
            # A copy in the standard layout: a one-channel map can also pass for channels-last, and the convolutions
            # would then take another path, with results a few 1e-6 apart for inputs that differ only in layout.
            x = torch.rot90(x, turns, dims=(-2, -1)) if turns else x.clone(memory_format=torch.contiguous_format)
            logits = self._logits(x, tiling)
            probs = self._to_probabilities(logits)
            probs = torch.rot90(probs, -turns, dims=(-2, -1)) if turns else probs
            probs = probs.flip(-1) if flip else probs
            total = probs if total is None else total + probs
        return total / len(transforms)

    @staticmethod
    def _to_probabilities(logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == 1:  # one logit: a binary model read through a sigmoid
            p = torch.sigmoid(logits.float())
            return torch.cat([1 - p, p], dim=1)
        return torch.softmax(logits.float(), dim=1)

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x).sample

    def _logits(self, image, tiling: _Tiling) -> torch.Tensor:
        if self.unet.config.padding == "valid":
            return self._overlap_tile(image, tiling)
        return self._same_padding(image, tiling)

    def _overlap_tile(self, image, tiling: _Tiling) -> torch.Tensor:
        tile = self._tile(tiling.tile_size, "sample_size")
        try:
            out = self.unet.output_size(tile)
        except ValueError as err:
            raise InputError(f"tile_size {tile} does not fit this valid-padding model: {err}") from None
        return overlap_tile(self._predict, image, tile, out, self.unet.downsampling_factor, tiling.tiles_per_batch, self.progress_bar)

    def _same_padding(self, image, tiling: _Tiling) -> torch.Tensor:
        f = 1 if self.unet.config.pad_input else self.unet.downsampling_factor
        sides = tuple(image.shape[2:])
        if tiling.tile_size is None or all(side <= t for side, t in zip(sides, self._tile(tiling.tile_size))):
            return whole_image(self._predict, self.unet, image)  # mirror-padded up to a size the model takes
        tile = self._tile(tiling.tile_size)
        bad = [t for t in tile if t % f]
        if bad:
            raise InputError(f"tile_size {tile} must be a multiple of {f} (the model's downsampling factor) for this same-padding model.")
        overlap = tuple(t // 4 for t in tile) if tiling.overlap is None else (tiling.overlap,) * len(tile)
        if not all(0 <= o < t for o, t in zip(overlap, tile)):
            raise InputError(f"overlap must lie in [0, tile_size); got {overlap[0]} for tile {tile}.")
        # Sides smaller than a tile are mirrored up to it, so every window is a full tile.
        padded = mirror_pad(image, (0,) * len(tile), [max(t - side, 0) for t, side in zip(tile, sides)])
        logits = sliding_window(self._predict, padded, tile, overlap, tiling.tiles_per_batch, self.progress_bar, tiling.blend)
        return logits[(slice(None), slice(None), *(slice(side) for side in sides))]

    def _tile(self, tile_size, default: str | None = None) -> tuple[int, ...]:
        """The tile, one side per spatial axis, from a side or a sequence of sides (default: the model's sample_size)."""
        dims = model_dims(self.unet.config)
        if tile_size is None and default is not None:
            tile_size = self.unet.config.sample_size
            if tile_size is None:
                raise InputError("the U-Net config has no sample_size; pass tile_size, e.g. one of model.valid_input_sizes(572).")
        if isinstance(tile_size, int):
            return (tile_size,) * dims
        tile = tuple(int(t) for t in tile_size)
        if len(tile) != dims or min(tile) < 1:
            axes = {1: "an (l,) tuple", 2: "an (h, w) pair", 3: "a (d, h, w) triple"}[dims]
            raise InputError(f"tile_size must be a positive int or {axes}; got {tile_size!r}.")
        return tile

