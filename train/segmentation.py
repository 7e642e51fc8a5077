"""The segmentation task: a U-Net with a segmentation head trained on image/mask pairs.

Training examples are crops cut after the joint augmentations: the label crop is ``data.image_size``
and the image crop is the network input that produces it (larger with valid padding, mirror-padded
at the image border as in the paper). Validation runs on whole images, padded so that the output
covers them, and reports Dice, IoU and pixel error per class and on average. Volumes
(``data.source: volumes``, a 3D model) train on 3D crops, ``data.crop_depth`` deep, and validate on
whole volumes the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import save_image

from pipelines import SegmentationPipeline
from pipelines.images import tint
from pipelines.tiling import covering_input, whole_image
from unet_diffusion import UNet, save_weights
from unet_diffusion.blocks import segmentation_classes
from unet_diffusion.errors import InputError
from unet_diffusion.outputs import umask_modes

from .checkpoint import ema_weights
from .config import Config, ConfigError
from .deep_supervision import DeepSupervision, level_weights, resized
from .diffusion import build_unet
from .losses import boundary_weight_map, ce_dice_loss, cross_entropy, dice_loss
from .metrics import class_names, segmentation_metric_names
from .transforms import JointTransform, VolumeTransform


def input_size_for(model: UNet, output: int) -> int:
    """The input side whose output side is ``output`` (equal with same padding); ValueError if none."""
    if model.config.padding == "same":
        model.output_size(output)  # raises, naming valid sizes, if the side does not fit
        return output
    n = covering_input(model, output)
    if model.output_size(n) == output:
        return n
    outputs = sorted({model.output_size(m) for m in model.valid_input_sizes(n, count=8)})
    raise ConfigError(f"no input size of this valid-padding model gives a {output}-pixel output; "
                      f"valid output sides near it: {outputs}. Set data.image_size to one of them.")


def predict_logits(model, image: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, K, H, W)`` for whole images ``(B, C, H, W)``: one forward, the input mirror-padded so the output
    covers them (the segmentation pipeline's ``whole_image``). ``model`` may be wrapped (DDP)."""
    net = model.module if hasattr(model, "module") else model
    return whole_image(lambda x: model(x).sample, net, image)


def class_stats(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class counts ``(K, 3)``: intersection, predicted pixels, true pixels (hard argmax)."""
    pred = logits.argmax(dim=1)
    rows = []
    for k in range(num_classes):
        p, t = pred == k, target == k
        rows.append(torch.stack([(p & t).sum(), p.sum(), t.sum()]))
    return torch.stack(rows).double()


def metrics_from_stats(stats: torch.Tensor, names: list[str]) -> dict:
    """Dice, IoU (per class and their means over classes present) and pixel error from ``class_stats`` sums, under
    the names of ``segmentation_metric_names``."""
    inter, pred, true = stats[:, 0], stats[:, 1], stats[:, 2]
    present = (pred + true) > 0
    dice = torch.where(present, 2 * inter / (pred + true).clamp_min(1), torch.ones_like(inter))
    iou = torch.where(present, inter / (pred + true - inter).clamp_min(1), torch.ones_like(inter))
    values = [dice[present].mean().item(), iou[present].mean().item(), 1 - (inter.sum() / true.sum().clamp_min(1)).item()]
    values += [value for k in range(len(names)) for value in (dice[k].item(), iou[k].item())]
    return dict(zip(segmentation_metric_names(names), values, strict=True))


def overlay(image: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """An RGB picture ``(3, H, W)`` of a [-1, 1] image ``(C, H, W)`` with the classes tinted in the pipelines' palette."""
    rgb = image if image.shape[0] == 3 else image.mean(0, keepdim=True).expand(3, -1, -1)
    return tint((rgb + 1) / 2, classes)


class SegmentationTask:
    """Train a segmenter: crops, losses, validation metrics, overlays and the saved weights."""

    def __init__(self, config: Config):
        self.config = config  # its rules across fields were checked as it was read (train.config.check_rules)
        with torch.device("meta"):  # the network's own checks and the sizes, without allocating weights
            probe = build_unet(config, in_channels=config.data.channels)
        s = config.segmentation
        self.num_classes = segmentation_classes(probe.config)
        self.names = class_names(s.class_names, self.num_classes)
        self.volumes = config.data.source == "volumes"
        d = config.data
        side = d.image_size
        self.out_size = (d.crop_depth or side, side, side) if self.volumes else side
        if self.volumes:
            self.in_size = tuple(input_size_for(probe, n) for n in self.out_size)
            self.joint = VolumeTransform(self.out_size, self.in_size, d.augment, d.oversample, d.oversample_class)
        else:
            self.in_size = input_size_for(probe, self.out_size)
            self.joint = JointTransform(self.out_size, self.in_size, d.augment, d.oversample, d.oversample_class)
        # deep supervision: the loss weight of the full-resolution output and of each supervised level
        self.level_weights = level_weights(len(probe.config.channels)) if s.deep_supervision else None
        self.class_weights = torch.tensor(s.class_weights, dtype=torch.float32) if s.class_weights else None
        self._weight_maps: dict[int, torch.Tensor] = {}
        self.trainer = None

    def attach(self, trainer) -> None:
        self.trainer = trainer

    def build_model(self) -> UNet | DeepSupervision:
        """The UNet; with ``segmentation.deep_supervision``, inside the training-only ``DeepSupervision``."""
        unet = build_unet(self.config, in_channels=self.config.data.channels, sample_size=self.in_size)
        return DeepSupervision(unet, self.num_classes) if self.config.segmentation.deep_supervision else unet

    # ------------------------------------------------------------------------ data
    def check_examples(self, examples) -> None:
        self.prepare(examples.source.load(examples.indices[0]), examples.indices[0])

    def examples_source(self, source, indices: list[int]):
        """Where the examples are read: the source itself (nothing is cached)."""
        return source

    def _tensors(self, raw, index: int):
        if raw.mask is None:
            raise InputError(f"example {index} has no mask; a segmentation run needs masks (data.mask_column or data.mask_dir).")
        if isinstance(raw.image, np.ndarray):
            image = torch.from_numpy(raw.image)                                    # a volume: (C, D, H, W)
        else:
            image = TF.pil_to_tensor(raw.image).float() / 255                    # (C, H, W) in [0, 1]
        mask = torch.from_numpy(np.asarray(raw.mask, dtype=np.int64))              # (H, W) or (D, H, W)
        if int(mask.max()) >= self.num_classes:
            raise InputError(f"the mask of example {index} holds class {int(mask.max())} but the model has {self.num_classes} "
                             "classes (model.args.out_channels); map pixel values with data.mask_values.")
        return image, mask

    def weight_map(self, mask: np.ndarray, index: int) -> torch.Tensor:
        """The boundary weight map of one mask (computed once per example and kept); of a volume, slice by slice."""
        if index not in self._weight_maps:
            s = self.config.segmentation
            slices = [mask] if mask.ndim == 2 else list(mask)
            maps = [boundary_weight_map(m, s.object_class, s.w0, s.sigma, self.num_classes, s.balance_classes) for m in slices]
            self._weight_maps[index] = torch.from_numpy(maps[0] if mask.ndim == 2 else np.stack(maps))
        return self._weight_maps[index]

    def prepare(self, raw, index: int) -> dict:
        image, mask = self._tensors(raw, index)
        weights = self.weight_map(raw.mask, index) if self.config.segmentation.weight_map else None
        image, mask, weights = self.joint(image, mask, weights)
        return {"image": image * 2 - 1, "mask": mask.long(), "weights": weights}

    def prepare_eval(self, raw, index: int) -> dict:
        image, mask = self._tensors(raw, index)
        return {"image": image * 2 - 1, "mask": mask}

    # ------------------------------------------------------------------------ loss
    def loss(self, model, batch: dict) -> torch.Tensor:
        target, weights = batch["mask"], batch["weights"]
        if not self.config.segmentation.deep_supervision:
            return self.pixel_loss(model(batch["image"]).sample.float(), target, weights)
        # (B, K, out, out), then (B, K, out / 2^i, out / 2^i) for each supervised level i
        outputs = model(batch["image"])
        return sum(w * self.pixel_loss(logits.float(), resized(target, logits.shape[2:]), resized(weights, logits.shape[2:]))
                   for w, logits in zip(self.level_weights, outputs, strict=True))

    def pixel_loss(self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The configured loss (``segmentation.loss``) of logits ``(B, K, *S)`` against classes and pixel weights ``(B, *S)``."""
        s = self.config.segmentation
        class_weights = self.class_weights.to(logits.device) if self.class_weights is not None else None
        if s.loss == "ce":
            return cross_entropy(logits, target, class_weights, weights)
        if s.loss == "dice":
            return dice_loss(logits, target, weights)
        return ce_dice_loss(logits, target, class_weights, weights, s.dice_weight)

    # ------------------------------------------------------------------------ evaluation and pictures
    def evaluate(self) -> dict:
        """Dice / IoU / pixel error over the whole validation images, summed over all processes."""
        trainer = self.trainer
        acc, examples = trainer.accelerator, trainer.val_examples
        model = trainer.network()  # unwrapped, no DDP collectives: processes may run different numbers of images
        stats = torch.zeros(self.num_classes, 3, dtype=torch.float64, device=acc.device)
        for i in range(acc.process_index, len(examples), acc.num_processes):
            item = examples[i]
            logits = predict_logits(model, item["image"][None].to(acc.device))
            stats += class_stats(logits.float(), item["mask"][None].to(acc.device), self.num_classes)
        if acc.num_processes > 1:
            stats = acc.reduce(stats, "sum")
        stats = stats.cpu()
        predicted = stats[:, 1]
        if (predicted > 0).sum() == 1:
            only = self.names[int(predicted.argmax())]
            trainer.log(f"hint: every validation pixel is predicted as {only!r}. Early in training that is normal; if it "
                        "persists, the classes are unbalanced (try segmentation.weight_map=true or class_weights) or "
                        "optim.lr is off.")
        return metrics_from_stats(stats, self.names)

    def log_scalars(self) -> dict:
        """Scalars logged beside the loss: none for segmentation."""
        return {}

    def save_pipeline(self, folder: Path) -> None:
        """The ``SegmentationPipeline`` folder of the current weights (EMA when kept)."""
        unet = self.trainer.network()
        with ema_weights(unet, self.trainer.ema):
            # Training feeds the network (pixels - 0.5) / 0.5; the pipeline folder records that.
            SegmentationPipeline(unet=unet, image_mean=0.5, image_std=0.5).save_pretrained(str(folder), safe_serialization=True)
        umask_modes(folder)  # save_pretrained writes safetensors 0600

    def picture_every(self) -> int:
        return self.config.segmentation.overlay_every

    def overlays(self) -> torch.Tensor | None:
        """Rows of (image, truth, prediction) for the first validation (or training) images, EMA weights."""
        trainer = self.trainer
        examples = trainer.val_examples or trainer.train_examples
        unet = trainer.network()
        pictures = []
        with ema_weights(unet, trainer.ema):
            for i in range(min(self.config.segmentation.num_overlays, len(examples))):
                item = self.prepare_eval(examples.source.load(examples.indices[i]), examples.indices[i])
                image, truth = item["image"], item["mask"]
                pred = predict_logits(unet, image[None].to(trainer.accelerator.device)).argmax(1)[0].cpu()
                if self.volumes:  # the middle slice of a volume
                    middle = truth.shape[0] // 2
                    image, truth, pred = image[:, middle], truth[middle], pred[middle]
                gray = ((image if image.shape[0] == 3 else image.expand(3, -1, -1)) + 1) / 2
                pictures += [gray, overlay(image, truth), overlay(image, pred)]
        return torch.stack(pictures) if pictures else None

    def pictures(self, step: int) -> Path | None:
        grid = self.overlays()
        if grid is None:
            return None
        path = self.trainer.run_dir / "overlays" / f"step-{step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path, nrow=3, padding=4, pad_value=1.0)
        return path

    def finish(self, step: int) -> None:
        """Write the final overlays and the weights (EMA when kept) as safetensors."""
        trainer = self.trainer
        run_dir = trainer.run_dir
        grid = self.overlays()
        if grid is not None:
            save_image(grid, run_dir / "overlays.png", nrow=3, padding=4, pad_value=1.0)
        unet = trainer.network()
        with ema_weights(unet, trainer.ema):
            save_weights(unet, run_dir / "model.safetensors")
        self.save_pipeline(run_dir / "pipeline")
        trainer.log(f"wrote {run_dir / 'model.safetensors'} and {run_dir / 'pipeline'} (for unet-diffusion segment)")
