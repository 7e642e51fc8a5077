"""segmentation-models-pytorch's U-Net as a contender in our training loop and pipeline.

``SmpUNet`` wraps ``segmentation_models_pytorch.Unet`` (no pretrained weights) so that it looks like
our same-padding segmentation ``UNet`` where ``train.segmentation`` and ``SegmentationPipeline`` look:
a ``config`` with ``head="segment"``, ``padding="same"`` and no conditioning, ``output_size`` and
``downsampling_factor`` (32: five stride-2 stages of the encoder), and a forward that returns an
object with ``.sample``. It is a diffusers ``ModelMixin``, so checkpoints save it like ours.

``SmpTask`` is the segmentation task with this network: the same data, crops (a multiple of 32),
augmentation, loss and optimizer; only the model and the saved artifact differ. Benchmark code,
not part of the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, FrozenDict, register_to_config
from diffusers.utils import BaseOutput

from pipelines import SegmentationPipeline
from train.checkpoint import ema_weights
from train.segmentation import SegmentationTask
from train.transforms import JointTransform

DOWNSAMPLING = 32        # smp encoders of depth 5 halve the input five times
# Fields of our UNet's config that the task and the pipeline read; fixed for this network.
SAME_PADDING_SEGMENTER = dict(head="segment", padding="same", pad_input=False, sample_size=None,
                              time_embedding=None, num_class_labels=None, context_dim=None)


def smp_available() -> bool:
    """Whether segmentation-models-pytorch can be imported."""
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def check_side(size: int) -> int:
    """``size`` if smp's U-Net takes it (a multiple of 32), else a ValueError naming the nearest sides."""
    if size < 1 or size % DOWNSAMPLING:
        below = max(size - size % DOWNSAMPLING, DOWNSAMPLING)
        raise ValueError(f"smp's U-Net takes sides that are multiples of {DOWNSAMPLING}; got {size} "
                         f"(nearest: {below}, {below + DOWNSAMPLING}).")
    return size


def smp_crop(crop: int) -> int:
    """The largest multiple of 32 not above ``crop``: the side smp's U-Net takes."""
    if crop < DOWNSAMPLING:
        raise ValueError(f"smp's U-Net needs crops of at least {DOWNSAMPLING} pixels (a multiple of 32); got {crop}.")
    return crop - crop % DOWNSAMPLING


@dataclass
class SmpOutput(BaseOutput):
    """Logits ``(B, K, H, W)``, as our ``UNet`` returns them."""

    sample: torch.Tensor


class SmpUNet(ModelMixin, ConfigMixin):
    """``segmentation_models_pytorch.Unet`` with the interface of a same-padding segmentation ``UNet``.

    Args:
        encoder_name: an smp encoder, e.g. ``"resnet18"`` or ``"resnet34"``; randomly initialised.
        in_channels: image channels.
        out_channels: classes (logits per pixel).
    """

    @register_to_config
    def __init__(self, encoder_name: str = "resnet34", in_channels: int = 1, out_channels: int = 2):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.net = smp.Unet(encoder_name=encoder_name, encoder_weights=None, in_channels=in_channels, classes=out_channels)

    @property
    def config(self) -> FrozenDict:
        """The saved fields (encoder, channels) and the fixed ones our task and pipeline read."""
        return FrozenDict({**self._internal_dict, **SAME_PADDING_SEGMENTER})

    @property
    def downsampling_factor(self) -> int:
        return DOWNSAMPLING

    def output_size(self, size: int | tuple[int, int]) -> int | tuple[int, int]:
        """The input size itself (same padding); ValueError unless each side is a multiple of 32."""
        if not isinstance(size, int):
            return tuple(check_side(int(s)) for s in size)
        return check_side(size)

    def forward(self, sample: torch.Tensor) -> SmpOutput:  # (B, C, H, W) -> logits (B, K, H, W)
        return SmpOutput(sample=self.net(sample))


class SmpTask(SegmentationTask):
    """The segmentation task of ``config`` with ``SmpUNet`` as the network.

    Everything but the model comes from the config as for our network (classes, loss, weight map,
    augmentation, optimizer); the crop is ``crop``, a multiple of 32 (input and label crops are equal
    with same padding). ``finish`` saves the network (EMA weights when kept) to ``<run>/smp-unet``.
    """

    def __init__(self, config, encoder_name: str, crop: int):
        super().__init__(config)  # checks the config's segmentation settings against its classes
        if config.segmentation.deep_supervision:
            raise ValueError("segmentation.deep_supervision reads our U-Net's decoder; the smp peer trains without it.")
        self.encoder_name = encoder_name
        self.out_size = self.in_size = check_side(crop)
        self.joint = JointTransform(crop, crop, config.data.augment, config.data.oversample, config.data.oversample_class)

    def build_model(self) -> SmpUNet:
        return SmpUNet(self.encoder_name, in_channels=self.config.data.channels, out_channels=self.num_classes)

    def finish(self, step: int) -> None:
        trainer = self.trainer
        model = trainer.accelerator.unwrap_model(trainer.model)
        with ema_weights(model, trainer.ema):
            model.save_pretrained(str(trainer.run_dir / "smp-unet"), safe_serialization=True)
        trainer.log(f"wrote {trainer.run_dir / 'smp-unet'}")


def load_smp_pipeline(run_dir: str | Path) -> SegmentationPipeline:
    """The trained ``SmpUNet`` of a run in ``SegmentationPipeline``, fed pixels as in training.

    Training feeds the network ``(pixels - 0.5) / 0.5`` (``SegmentationTask.prepare``); our runs'
    pipeline folders record the same normalisation.
    """
    return SegmentationPipeline(unet=SmpUNet.from_pretrained(str(Path(run_dir) / "smp-unet")), image_mean=0.5, image_std=0.5)
