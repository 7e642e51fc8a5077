"""Deep supervision (nnU-Net): the segmentation loss also on the decoder's lower resolutions, for training only.

Each decoder level below the top gets an auxiliary 1x1 convolution to the classes, read from the level's map
before its upsampling (the input of ``decoder["level{i}_up"]``, captured by a forward pre-hook); the loss of
level ``i`` compares it with the mask resized to that map (nearest), weighted 1/2^i. As in nnU-Net the lowest
resolution is left out and the weights, the full-resolution output's included, are normalised to sum 1.

The heads live in ``DeepSupervision``, a training-only module holding the UNet and the heads: it is what the loop
optimises and Accelerate prepares (the heads' weights and optimizer state are in every checkpoint), while the
EMA, the evaluation and every saved network take the UNet inside (``network_of``), so a run's pipeline is the
same with or without the option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unet_diffusion.nd import conv


def supervised_levels(levels: int) -> list[int]:
    """The levels whose decoder maps get an auxiliary head: all below the top but the lowest (``levels`` in the U)."""
    return list(range(1, levels - 1))


def level_weights(levels: int) -> list[float]:
    """The loss weight of the full-resolution output, then of each supervised level: 1/2^i, normalised to sum 1."""
    raw = [0.5**i for i in [0, *supervised_levels(levels)]]
    return [w / sum(raw) for w in raw]


def resized(target: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """A mask or pixel-weight map ``(B, *S)`` resized to the spatial ``size`` by nearest neighbour, dtype kept."""
    return F.interpolate(target[:, None].float(), size=tuple(size), mode="nearest")[:, 0].to(target.dtype)


class DeepSupervision(nn.Module):
    """The UNet being trained and its auxiliary heads; ``forward`` gives the logits of every supervised resolution,
    the full-resolution output first, then level 1, 2, ... (``level_weights`` weighs their losses)."""

    def __init__(self, unet: nn.Module, num_classes: int):
        super().__init__()
        self.unet = unet
        c = unet.config
        # A level's decoder map has the level's width (the middle's at the lowest level, whose width it shares).
        self.heads = nn.ModuleDict({f"level{i}": conv(c.dims, c.channels[i], num_classes, 1)
                                    for i in supervised_levels(len(c.channels))})
        self._maps: dict[str, torch.Tensor] | None = None   # filled during this module's forward only
        for name in self.heads:
            unet.decoder[f"{name}_up"].register_forward_pre_hook(self._keeper(name))

    def _keeper(self, name: str):
        def keep(module, args):
            if self._maps is not None:  # not while the UNet runs alone (evaluation) or recomputes (checkpointing)
                self._maps[name] = args[0]
        return keep

    def forward(self, sample: torch.Tensor) -> list[torch.Tensor]:
        self._maps = {}
        try:
            out = self.unet(sample).sample
            maps = self._maps
        finally:
            self._maps = None
        return [out, *(head(maps[name]) for name, head in self.heads.items())]


def network_of(model: nn.Module) -> nn.Module:
    """The network a run trains: the UNet inside ``DeepSupervision``, else ``model`` itself (already unwrapped
    from Accelerate)."""
    return model.unet if isinstance(model, DeepSupervision) else model
