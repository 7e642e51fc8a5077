"""Image transforms, built on torchvision.transforms.v2.

For segmentation the image, its mask, the weight map and a "valid" map go through one v2 call, so
every random flip, rotation and elastic deformation moves them together (masks are resampled with
nearest neighbour). The valid map starts at 1 and is filled with 0 where a transform invents
pixels (rotation corners), so the loss leaves those pixels out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from pipelines.tiling import mirror_pad
from unet_diffusion.errors import InputError

from .config import AugmentConfig, check_volume_augment


def diffusion_transform(image_size: int, augment: AugmentConfig) -> v2.Compose:
    """uint8 image tensor ``(C, H, W)`` -> float ``(C, S, S)`` in [-1, 1], resized and center-cropped."""
    steps = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size), *diffusion_flips(augment)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5])]
    return v2.Compose(steps)


def diffusion_flips(augment: AugmentConfig) -> list[v2.Transform]:
    """The random flips of a denoiser's images (``data.augment.hflip`` / ``vflip``), in the order they are drawn."""
    return [flip for flip, wanted in ((v2.RandomHorizontalFlip(), augment.hflip), (v2.RandomVerticalFlip(), augment.vflip)) if wanted]


class RandomRotate90(v2.Transform):
    """Rotate every input by the same random multiple of 90 degrees (no interpolation, no corners)."""

    def make_params(self, flat_inputs):
        return {"k": int(torch.randint(4, ()).item())}

    def transform(self, inpt, params):
        if params["k"] == 0 or not isinstance(inpt, torch.Tensor):
            return inpt
        rotated = torch.rot90(inpt.as_subclass(torch.Tensor), params["k"], dims=(-2, -1))
        return tv_tensors.wrap(rotated, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else rotated


class GridElastic(v2.ElasticTransform):
    """Elastic deformation as in the U-Net paper: random displacements (Gaussian, ``std`` pixels) on a
    coarse ``grid`` x ``grid`` lattice, interpolated bicubically to every pixel.

    Only the displacement field is drawn here; torchvision's ``ElasticTransform`` applies it to every
    input (images bilinear, masks nearest). Its own field, Gaussian-blurred noise, needs a blur
    kernel of 8 sigma pixels, which is very slow for the smooth, large-scale warps the paper uses.
    """

    def __init__(self, std: float, grid: int = 3, fill=0):
        super().__init__(alpha=0.0, fill=fill)
        self.std, self.grid = float(std), int(grid)

    def make_params(self, flat_inputs):
        height, width = v2.functional.get_size(flat_inputs[0])
        coarse = torch.randn(1, 2, self.grid, self.grid) * self.std                        # (1, 2, g, g) pixels
        dense = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)  # (1, 2, H, W)
        to_unit = torch.tensor([2.0 / width, 2.0 / height]).view(1, 2, 1, 1)   # torchvision uses [-1, 1] coordinates
        return {"displacement": (dense * to_unit).permute(0, 2, 3, 1)}                     # (1, H, W, 2): dx, dy


def crop_corner(mask: torch.Tensor, weights: torch.Tensor, out_size: tuple[int, ...], oversample: float = 0.0,
                want: int | None = None) -> list[int]:
    """The first corner of a random ``out_size`` crop of ``mask`` (one index per axis).

    With probability ``oversample`` the crop is forced to hold a pixel of class ``want`` that counts in the loss
    (``weights`` > 0), drawn uniformly among them, as nnU-Net's foreground oversampling; an example without one
    gets a plain random crop. Without oversampling the draws are the plain crop's alone.
    """
    sides = mask.shape
    if oversample and torch.rand(()) < oversample:
        where = ((mask == want) & (weights > 0)).nonzero()                        # (N, ndim) positions of the class
        if len(where):
            pixel = where[int(torch.randint(len(where), ()).item())].tolist()
            # the corners whose crop holds the pixel, inside the example
            return [int(torch.randint(max(0, p - o + 1), min(p, s - o) + 1, ()).item()) for p, o, s in zip(pixel, out_size, sides)]
    return [int(torch.randint(s - o + 1, ()).item()) for s, o in zip(sides, out_size)]


class JointTransform:
    """Augment an image and its masks together, then cut a training crop.

    Args:
        out_size: side of the label crop (the network's output size).
        in_size: side of the image crop (the network's input size). With a valid-padding network it
            is larger than ``out_size``; the image is mirror-padded by the difference, as in the U-Net
            paper's overlap-tile strategy, so border pixels still get context.
        augment: which augmentations to draw.
        oversample: the fraction of crops forced to hold a pixel of class ``oversample_class`` (``crop_corner``).
    """

    def __init__(self, out_size: int, in_size: int, augment: AugmentConfig, oversample: float = 0.0,
                 oversample_class: int | None = None):
        if in_size < out_size or (in_size - out_size) % 2:
            raise InputError(f"input crop {in_size} must be at least the output crop {out_size}, larger by an even number.")
        self.out_size, self.in_size, self.margin = out_size, in_size, (in_size - out_size) // 2
        self.oversample, self.oversample_class = oversample, oversample_class
        self.brightness = augment.brightness
        steps: list = []
        if augment.hflip:
            steps.append(v2.RandomHorizontalFlip())
        if augment.vflip:
            steps.append(v2.RandomVerticalFlip())
        if augment.rotate90:
            steps.append(RandomRotate90())
        if augment.rotation:
            steps.append(v2.RandomRotation(augment.rotation, fill={tv_tensors.Image: 0.0, tv_tensors.Mask: 0}))
        if augment.elastic_std:
            steps.append(GridElastic(augment.elastic_std, augment.elastic_grid, fill={tv_tensors.Image: 0.0, tv_tensors.Mask: 0}))
        self.augment = v2.Compose(steps) if steps else None

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None):
        """``image`` float ``(C, H, W)`` in [0, 1], ``mask`` int ``(H, W)``, ``weights`` float ``(H, W)`` or None.

        Returns ``(image (C, in, in), mask (out, out), pixel_weights (out, out))``; pixel weights are
        the weight map (or 1) times the valid map.
        """
        weights = torch.ones(mask.shape) if weights is None else weights
        valid = torch.ones(mask.shape)
        if self.augment is not None:
            image, mask, weights, valid = self.augment(
                tv_tensors.Image(image), tv_tensors.Mask(mask), tv_tensors.Mask(weights), tv_tensors.Mask(valid)
            )
        image, mask, weights, valid = (torch.as_tensor(t) for t in (image, mask, weights, valid))
        if self.brightness:
            image = (image * (1 + (2 * torch.rand(()) - 1) * self.brightness)).clamp(0, 1)

        height, width = mask.shape
        if height < self.out_size or width < self.out_size:
            raise InputError(f"a {height}x{width} example is smaller than the {self.out_size}-pixel training crop; lower data.image_size.")
        weights = weights * valid
        top, left = crop_corner(mask, weights, (self.out_size,) * 2, self.oversample, self.oversample_class)
        out = (slice(top, top + self.out_size), slice(left, left + self.out_size))
        m = self.margin
        image = mirror_pad(image, (m, m), (m, m))[:, top:top + self.in_size, left:left + self.in_size]
        return image, mask[out], weights[out]



class VolumeTransform:
    """Augment a volume and its label volume together, then cut a training crop (the 3D ``JointTransform``).

    Flips along each axis (``hflip``: W, ``vflip``: H, ``dflip``: D), quarter turns in the H-W plane, the elastic
    deformation in 3D (``elastic_std`` voxels of displacement along each axis on an ``elastic_grid``^3 lattice,
    interpolated trilinearly; voxels pulled from outside the volume are left out of the loss) and brightness; free
    rotations are refused for volumes (``check``).

    Args:
        out_size: ``(d, h, w)`` of the label crop (the network's output size).
        in_size: ``(d, h, w)`` of the volume crop (the network's input); larger with valid padding, mirror-padded
            at the volume's border by the difference.
        augment: which augmentations to draw.
        oversample: the fraction of crops forced to hold a voxel of class ``oversample_class`` (``crop_corner``).
    """

    def __init__(self, out_size: tuple[int, int, int], in_size: tuple[int, int, int], augment: AugmentConfig,
                 oversample: float = 0.0, oversample_class: int | None = None):
        for out, inp in zip(out_size, in_size):
            if inp < out or (inp - out) % 2:
                raise InputError(f"input crop {in_size} must be at least the output crop {out_size}, larger by an even number.")
        check_volume_augment(augment)
        self.out_size, self.in_size = tuple(out_size), tuple(in_size)
        self.margins = tuple((i - o) // 2 for i, o in zip(in_size, out_size))
        self.flip_axes = [axis for axis, on in ((-3, augment.dflip), (-2, augment.vflip), (-1, augment.hflip)) if on]
        self.rotate90, self.brightness = augment.rotate90, augment.brightness
        self.elastic_std, self.elastic_grid = augment.elastic_std, augment.elastic_grid
        self.oversample, self.oversample_class = oversample, oversample_class

    def _warp(self, image: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor):
        """The same random elastic deformation of the volume (trilinear), its labels and weights (nearest); weights
        are zero where the deformation pulled voxels from outside the volume."""
        sides = mask.shape
        coarse = torch.randn(1, 3, *(self.elastic_grid,) * 3) * self.elastic_std       # (1, 3, g, g, g) voxels: dz, dy, dx
        shift = F.interpolate(coarse, size=sides, mode="trilinear", align_corners=True)[0]  # (3, D, H, W)
        axes = [torch.linspace(-1, 1, n) for n in sides]
        base = torch.stack(torch.meshgrid(*axes, indexing="ij"))                        # (3, D, H, W): z, y, x in [-1, 1]
        to_unit = torch.tensor([2.0 / max(n - 1, 1) for n in sides]).view(3, 1, 1, 1)
        grid = (base + shift * to_unit).flip(0).permute(1, 2, 3, 0)[None]               # (1, D, H, W, 3): x, y, z
        sample = lambda t, mode: F.grid_sample(t[None], grid, mode=mode, padding_mode="zeros", align_corners=True)[0]
        inside = sample(torch.ones(1, *sides), "nearest")[0]
        image = sample(image, "bilinear")                                               # trilinear for 5D input
        mask = sample(mask[None].float(), "nearest")[0].round().long()
        return image, mask, sample(weights[None].float(), "nearest")[0] * inside

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None):
        """``image`` float ``(C, D, H, W)``, ``mask`` int ``(D, H, W)``, ``weights`` float ``(D, H, W)`` or None.

        Returns ``(image (C, *in_size), mask (*out_size), voxel_weights (*out_size))``.
        """
        weights = torch.ones(mask.shape) if weights is None else weights
        for axis in self.flip_axes:
            if torch.rand(()) < 0.5:
                image, mask, weights = (t.flip(axis) for t in (image, mask, weights))
        if self.rotate90:
            turns = int(torch.randint(4, ()).item())
            image, mask, weights = (torch.rot90(t, turns, dims=(-2, -1)) for t in (image, mask, weights))
        if self.elastic_std:
            image, mask, weights = self._warp(image, mask, weights)
        if self.brightness:
            image = (image * (1 + (2 * torch.rand(()) - 1) * self.brightness)).clamp(0, 1)
        if any(side < out for side, out in zip(mask.shape, self.out_size)):
            raise InputError(f"a {' x '.join(map(str, mask.shape))} volume is smaller than the {self.out_size} training crop; "
                             "lower data.image_size or data.crop_depth.")
        corner = crop_corner(mask, weights, self.out_size, self.oversample, self.oversample_class)
        out = tuple(slice(c, c + o) for c, o in zip(corner, self.out_size))
        padded = mirror_pad(image, self.margins, self.margins)
        image = padded[(slice(None), *(slice(c, c + i) for c, i in zip(corner, self.in_size)))]
        return image, mask[out], weights[out]
