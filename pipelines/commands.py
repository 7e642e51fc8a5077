"""The ``sample``, ``segment`` and ``evaluate`` subcommands (entry points of the group ``unet_diffusion.commands``).

Each ``add_*(subparsers)`` adds its parser with ``unet_diffusion.cli.add_command``; a handler takes the
parsed arguments and returns an exit status. torch, diffusers and the pipelines load inside the handlers.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from unet_diffusion.cli import add_command
from unet_diffusion.errors import InputError, fail_if
from unet_diffusion.hub import source_kind

from .samplers import SAMPLER_SCHEDULERS

MODEL_HELP = (
    "a pipeline folder (model_index.json, from save_pretrained), a U-Net folder (config.json + "
    "diffusion_pytorch_model.safetensors), a .safetensors file written by save_weights, or a Hub id (org/name; "
    "HF_HUB_OFFLINE=1 reads the cache only)"
)

OUT_HELP = ("folder for the {what}: created if missing; an existing one must be empty (see --overwrite). The files appear "
            "when the run has finished, all at once")
OVERWRITE_HELP = ("replace what an existing --out holds: its files are removed and this run's written, so no earlier result "
                  "stays beside the new ones (a folder with subfolders, or one that holds an input, is refused)")


def add_sample(subparsers) -> None:
    """The ``sample`` subcommand."""
    sample = add_command(subparsers, "sample", run_sample, "sample images (or 1D signals, 3D volumes) from noise with a trained denoiser",
                         api_flags=API_FLAGS)
    sample.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    sample.add_argument("--out", required=True, metavar="DIR", help=OUT_HELP.format(what="images"))
    sample.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    sample.add_argument("--num-images", type=int, default=16, metavar="N", help="images to sample (default 16)")
    sample.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per network call (default 16)")
    _sampling_options(sample)
    sample.add_argument("--image", default=None, metavar="FILE", help="an init image for image-to-image (SDEdit)")
    sample.add_argument("--strength", type=float, default=None, metavar="S", help="with --image: the part of the schedule to run (default 0.8; 1.0 with --mask)")
    sample.add_argument("--mask", default=None, metavar="FILE", help="with --image: inpaint the white pixels, keep the black ones")
    _device_options(sample)


def _sampling_options(parser: argparse.ArgumentParser) -> None:
    """How ``sample`` (and ``evaluate``, given a model) draw images from noise."""
    # Left out, each of --sampler, --steps, --guidance-scale and --eta is the model's stored default (a run saves its
    # config's), else diffusers' default; the command prints what it used.
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="denoising steps (default: the model's stored default, else 1000 for DDPM and 50 for the others)")
    parser.add_argument("--sampler", choices=list(SAMPLER_SCHEDULERS), default=None,
                        help="sampler (default: the model's stored default, else its scheduler; DDPM for a bare U-Net)")
    parser.add_argument("--eta", type=float, default=None, metavar="ETA",
                        help="DDIM's eta: 0 deterministic, 1 DDPM-like noise (default: the model's stored default, else 0)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="image i uses seed + i, whatever the batch size (default 0)")
    parser.add_argument("--class-label", type=int, nargs="+", default=None, metavar="LABEL",
                        help="class-conditional models: one label for every image, or one per image")
    parser.add_argument("--guidance-scale", type=float, default=None, metavar="S",
                        help="classifier-free guidance scale (needs the null label; 1 = none; default: the model's stored default, else none)")
    parser.add_argument("--height", type=int, default=None, metavar="H", help="image height (default: the model's sample_size)")
    parser.add_argument("--width", type=int, default=None, metavar="W", help="image width (default: the model's sample_size)")
    parser.add_argument("--size", type=int, nargs="+", default=None, metavar="N",
                        help="1D and 3D models: the sample size, one side or one per axis (L, or D H W; default: the model's sample_size)")
    parser.add_argument("--prediction-type", choices=["epsilon", "v_prediction", "sample"], default=None,
                        help="what the U-Net predicts (default: the saved scheduler's setting, epsilon for a bare U-Net)")


def add_segment(subparsers) -> None:
    """The ``segment`` subcommand."""
    segment = add_command(subparsers, "segment", run_segment, "segment images (or .npy volumes and signals) with a trained segmentation U-Net",
                          api_flags=API_FLAGS)
    segment.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    segment.add_argument("input", metavar="INPUT", help="an image file or a folder of images (3D and 1D models: a .npy file or a folder of them)")
    segment.add_argument("--out", required=True, metavar="DIR", help=OUT_HELP.format(what="masks"))
    segment.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    segment.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png: the image with the classes tinted")
    segment.add_argument("--probabilities", action="store_true",
                         help="also write the probabilities: NAME_prob.png, p(class 1) as 16-bit grayscale (0..65535 = 0..1), "
                              "for two-class models; NAME_prob.npy, float32 (K, H, W), for K > 2 classes")
    segment.add_argument("--threshold", type=float, default=None, metavar="T",
                         help="two-class models: class 1 where p(class 1) >= T, with 0 < T < 1, instead of the most probable "
                              "class (0.5 = the argmax; higher marks fewer class-1 pixels)")
    segment.add_argument("--instances", type=int, default=None, metavar="CLASS",
                         help="also label the objects of class CLASS one by one (seeded watershed, so a gap in a boundary does "
                              "not merge two objects): NAME_instances.png, 16-bit, 0 off the class and 1..N (3D / 1D: .npy)")
    segment.add_argument("--seed-threshold", type=float, default=0.9, metavar="P",
                         help="with --instances: object cores are where p(CLASS) >= P (default 0.9)")
    segment.add_argument("--mask-values", choices=["spread", "index"], default="spread", help="gray values of the mask PNGs (default spread)")
    segment.add_argument("--tta", choices=["flip", "d4"], default=None, help="test-time augmentation: 4 flips or all 8 flips and rotations")
    segment.add_argument("--tile-size", type=int, default=None, metavar="N",
                         help="input tile side (valid padding: default the model's sample_size; same padding: default whole images; "
                              "3D: the side of a cubic tile)")
    segment.add_argument("--overlap", type=int, default=None, metavar="N", help="sliding-window overlap for same-padding models (default a quarter tile)")
    segment.add_argument("--blend", choices=["ramp", "gaussian", "uniform"], default="ramp",
                         help="how overlapping sliding windows are averaged (default ramp: linear over the overlap)")
    segment.add_argument("--strict", action="store_true", help="stop at the first image that cannot be read (default: skip it, exit 1 at the end)")
    _device_options(segment)


def _device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", default=None, metavar="NAME",
                        help="read the model's weights of this variant (e.g. fp16: diffusion_pytorch_model.fp16.safetensors)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--quiet", "--no-progress", action="store_true", help="no progress bars")


# What the pipelines call the options whose flags differ, so their errors can name the flags.
API_FLAGS = {
    "num_inference_steps": "--steps", "class_labels": "--class-label", "guidance_scale": "--guidance-scale",
    "mask_image": "--mask", "tile_size": "--tile-size", "prediction_type": "--prediction-type", "variant": "--variant",
}


def _device(name: str | None):
    import torch

    if name is not None and name.startswith("cuda") and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        raise InputError(f"--device {name}: torch {torch.__version__} ({build}) sees no CUDA GPU; use --device cpu, "
                         "or run on a machine with an NVIDIA GPU and a CUDA build of torch.")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _open_pipeline(loader, model: str, args, **kwargs):
    """The pipeline on ``--device``, with diffusers' loading bar and the pipeline's step bar off (the command sets its one bar)."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    pipe = loader(model, variant=args.variant, **kwargs).to(_device(args.device))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _progress(total: int, unit: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, disable=quiet or total < 2, dynamic_ncols=True)


def run_sample(args) -> int:
    """Sample images from noise and write each as a PNG, plus grid.png; a 1D or 3D model's samples are written as
    NumPy arrays (NNNNN.npy, float32 in [0, 1]: (L,) or (D, H, W), with a last channel axis when there is more
    than one channel). A pipeline folder brings its own
    scheduler, and so does a weights file written by training (the schedule it was trained with travels
    in its metadata); any other bare U-Net is sampled on a default DDPM schedule: 1000 training steps,
    linear betas 1e-4 to 0.02, epsilon prediction (see --prediction-type). --out must be new or empty (checked
    before sampling); --overwrite replaces what it holds, so no earlier image stays beside the new ones."""

    from unet_diffusion.outputs import check_output, staged_output

    _check_sampling(args)  # the flags first: a mistake is reported before torch and diffusers load
    fail_if(((args.strength is not None or args.mask) and not args.image, "--strength and --mask work on an init image; pass --image FILE too."))
    check_output(args.out, args.overwrite, _reads(args))  # before the sampling, not after it

    from unet_diffusion.inputs import model_dims

    from .images import load_image, make_grid
    from .loading import load_denoise_pipeline

    image = load_image(args.image) if args.image else None
    mask = load_image(args.mask) if args.mask else None
    pipe = _open_pipeline(load_denoise_pipeline, args.model, args, prediction_type=args.prediction_type)
    if model_dims(pipe.unet.config) != 2:
        return _write_arrays(pipe, args, image)
    images = _sample_images(pipe, args, args.class_label, image=image, strength=args.strength, mask_image=mask)
    with staged_output(args.out, args.overwrite, _reads(args)) as staging:
        for i, picture in enumerate(images):
            picture.save(staging / f"{i:05d}.png")
        make_grid(images).save(staging / "grid.png")
    print(f"wrote {len(images)} images and grid.png to {args.out}")
    return 0


def _write_arrays(pipe, args, image) -> int:
    """Samples of a 1D or 3D model as ``NNNNN.npy`` float32 arrays (the channel axis last, dropped for one channel)."""
    import numpy as np

    from unet_diffusion.inputs import model_dims
    from unet_diffusion.outputs import staged_output

    fail_if((image is not None, f"--image works with image models; this model has dims={model_dims(pipe.unet.config)}."))
    arrays = _sample_images(pipe, args, args.class_label, output_type="np")
    with staged_output(args.out, args.overwrite, _reads(args)) as staging:
        for i, array in enumerate(arrays):
            np.save(staging / f"{i:05d}.npy", (array[..., 0] if array.shape[-1] == 1 else array).astype(np.float32))
    shape = " x ".join(map(str, arrays[0].shape[:-1]))
    print(f"wrote {len(arrays)} arrays of {shape} to {args.out}")
    return 0


def _reads(args) -> list[str]:
    """The files and folders a command reads, which ``--overwrite`` must never remove."""
    return [path for path in (args.model, getattr(args, "input", None), getattr(args, "image", None), getattr(args, "mask", None)) if path]


def _check_sampling(args) -> None:
    """The sampling flags, before any model is read."""

    labels = args.class_label
    sizes = [("--height", args.height), ("--width", args.width), *(("--size", side) for side in args.size or [])]
    fail_if(
        (args.num_images < 1, f"--num-images must be at least 1; got {args.num_images}."),
        (args.batch_size < 1, f"--batch-size must be at least 1; got {args.batch_size}."),
        (args.steps is not None and args.steps < 1, f"--steps must be at least 1; got {args.steps}."),
        *((side is not None and side < 1, f"{flag} must be a positive number of pixels; got {side}.") for flag, side in sizes),
        (args.eta is not None and not 0 <= args.eta <= 1, f"--eta must lie in [0, 1] (0 deterministic DDIM, 1 DDPM-like); got {args.eta}."),
        (labels is not None and len(labels) not in (1, args.num_images),
         f"--class-label takes one label or one per image ({args.num_images}); got {len(labels or [])}."),
        (args.guidance_scale is not None and not math.isfinite(args.guidance_scale),
         f"--guidance-scale must be a finite number (1 = no guidance); got {args.guidance_scale}."),
    )
    if args.guidance_scale is not None and args.guidance_scale < 0:
        # Legitimate (it steers away from the condition), but more often a typo: say what it does.
        print(f"note: --guidance-scale {args.guidance_scale:g} is negative: the samples are pushed away from the asked "
              "condition; 1 is no guidance and above 1 strengthens it.", file=sys.stderr)


def _sample_images(pipe, args, labels: list[int] | None, output_type: str = "pil", **init) -> list:
    """``args.num_images`` PIL images (or arrays, ``output_type="np"``) of ``pipe`` in batches of ``--batch-size``;
    image i from seed + i and ``labels`` (one for all, or one per image)."""
    import torch

    settings = pipe.sampling_settings(args.sampler, args.steps, args.guidance_scale, args.eta)
    print(f"sampling {args.num_images} image{'s' * (args.num_images != 1)} with {settings.describe()} (the model's defaults unless given as flags)")
    one_batch = args.num_images <= args.batch_size
    pipe.set_progress_bar_config(disable=args.quiet or not one_batch)  # one batch: the bar counts denoising steps
    images = []
    with _progress(args.num_images if not one_batch else 0, "image", args.quiet) as bar:
        for start in range(0, args.num_images, args.batch_size):
            count = min(args.batch_size, args.num_images - start)
            # One generator per image, so image i is the same whatever the batch size.
            generators = [torch.Generator().manual_seed(args.seed + start + i) for i in range(count)]
            batch_labels = None
            if labels is not None:
                batch_labels = labels * count if len(labels) == 1 else labels[start : start + count]
            images.extend(pipe(
                count, num_inference_steps=args.steps, generator=generators, sampler=args.sampler, eta=args.eta,
                class_labels=batch_labels, guidance_scale=args.guidance_scale, height=args.height, width=args.width,
                size=args.size, output_type=output_type, **init,
            ).images)
            bar.update(count)
    return images


def run_segment(args) -> int:
    """Segment an image or every image of a folder and write the masks as PNG (class k as the gray value
    round(k * 255 / (K - 1)), so two classes are black and white; --mask-values index writes k itself).
    --probabilities also writes the class probabilities: NAME_prob.png, p(class 1) as a 16-bit grayscale PNG
    (0..65535 = 0..1), for two-class models; NAME_prob.npy, a float32 (K, H, W) array, for K > 2 classes.
    Valid-padding models are overlap-tiled, same-padding ones run on the whole image. A bare U-Net is fed
    pixels in [0, 1]. An image that cannot be read is skipped with a warning (exit status 1 at the end),
    or stops the run with --strict. 1D and 3D models read .npy arrays ((L,) / (D, H, W), or with a leading
    channel axis) and write NAME.npy, the uint8 labels of every sample / voxel (and NAME_prob.npy, float32
    (K, ...), with --probabilities). --instances CLASS also writes NAME_instances.png (16-bit; .npy for arrays
    or past 65535 objects): the objects of that class, 0 off it and 1..N one each. --out must be new or
    empty; --overwrite replaces what it holds (no earlier mask stays beside the new ones). Two inputs whose
    outputs would share a name (a.png and a.jpg both write a.png) are an error before anything runs."""
    from unet_diffusion.outputs import check_output, staged_output

    _check_segment(args)  # the flags first: a mistake is reported before torch and diffusers load
    check_output(args.out, args.overwrite, _reads(args))

    from unet_diffusion.blocks import segmentation_classes
    from unet_diffusion.inputs import model_dims

    from .images import image_files, load_array, load_image
    from .loading import load_segmentation_pipeline

    pipe = _open_pipeline(load_segmentation_pipeline, args.model, args)
    dims = model_dims(pipe.unet.config)
    arrays = dims != 2
    fail_if((arrays and args.overlay, f"--overlay draws on images; this model has dims={dims}."))
    files = image_files(args.input, (".npy",)) if arrays else image_files(args.input)
    _check_output_names(files, args)
    num_classes = max(segmentation_classes(pipe.unet.config), 2)  # a one-channel head's mask: 0 and 1
    skipped, converted = [], False
    with staged_output(args.out, args.overwrite, _reads(args)) as staging, _progress(len(files), "image", args.quiet) as bar:
        for file in files:
            try:
                image = load_array(file) if arrays else load_image(file)
            except InputError as err:
                if args.strict:
                    raise
                print(f"warning: skipped {file}: {err}", file=sys.stderr)
                skipped.append(file)
                continue
            converted = converted or _note_conversion(file, image, pipe.unet.config.in_channels)
            result = pipe(image, tile_size=args.tile_size, overlap=args.overlap, blend=args.blend, tta=args.tta or False,
                          threshold=args.threshold, instances=args.instances, seed_threshold=args.seed_threshold)
            if args.instances is not None:
                _write_instances(staging / f"{file.stem}_instances", result.instances[0], arrays)
            if arrays:
                _write_label_array(staging / file.stem, result, args.probabilities)
            else:
                _write_segmentation(file, staging / file.stem, image, result, num_classes, args)
            bar.update(1)
        if len(skipped) == len(files):
            raise InputError(f"none of the {len(files)} inputs could be read (see the warnings above); nothing was written "
                             f"to {args.out}.")
    written = len(files) - len(skipped)
    print(f"wrote {written} mask{'' if written == 1 else 's'} to {args.out}")
    if skipped:
        print(f"error: {len(skipped)} of {len(files)} images could not be read: {', '.join(f.name for f in skipped)}",
              file=sys.stderr)
        return 1
    return 0


def _check_segment(args) -> None:
    """The segmentation flags, before any model is read."""
    fail_if(
        (not Path(args.input).exists(), f"no image, array or folder at {args.input}."),
        (args.threshold is not None and not 0 < args.threshold < 1, f"--threshold must be a number strictly between 0 and 1; got {args.threshold}."),
        (not 0 < args.seed_threshold < 1, f"--seed-threshold must be a number strictly between 0 and 1; got {args.seed_threshold}."),
        (args.tile_size is not None and args.tile_size < 1, f"--tile-size must be a positive number of pixels; got {args.tile_size}."),
        (args.overlap is not None and args.overlap < 0, f"--overlap must be >= 0 pixels; got {args.overlap}."),
        (args.instances is not None and args.instances < 0, f"--instances takes a class index (>= 0); got {args.instances}."),
    )


def _note_conversion(file: Path, image, channels: int) -> bool:
    """Say once (returns True) when an image is converted to the model's channels: an RGB image for a one-channel
    model becomes grayscale, a grayscale one for an RGB model is repeated on three channels."""
    mode = getattr(image, "mode", None)
    rgb, gray = mode in ("RGB", "RGBA", "P", "CMYK"), mode in ("L", "LA", "1")
    if (channels == 1 and rgb) or (channels == 3 and gray):
        into = "grayscale (ITU-R 601 luma)" if channels == 1 else "three equal channels"
        print(f"note: {file.name} is {mode} but the model takes {channels}-channel images: it is converted to {into}, "
              "and so is every such image of this run.", file=sys.stderr)
        return True
    return False


def _check_output_names(files: list[Path], args) -> None:
    """Every output is named after its input's stem (``a.png`` -> ``a.png``, ``a_prob.png``, ...): two inputs that
    would write one name (``a.png`` and ``a.jpg``; ``a.png`` and ``a_overlay.png`` with --overlay) are an error."""
    suffixes = ["", *(["_overlay"] if args.overlay else []), *(["_prob"] if args.probabilities else []),
                *(["_instances"] if args.instances is not None else [])]
    writer: dict[str, Path] = {}
    for file in files:
        for suffix in suffixes:
            name = file.stem + suffix
            if name in writer:
                raise InputError(f"{writer[name].name} and {file.name} would both write {name} (outputs are named after the "
                                 "input without its extension); rename one of them, or segment them into separate folders.")
            writer[name] = file


def _write_instances(stem: Path, labels, arrays: bool) -> None:
    """``STEM.png`` (16-bit object labels) for an image with at most 65535 objects, ``STEM.npy`` (int32) otherwise."""
    import numpy as np
    from PIL import Image

    if arrays or labels.max() > np.iinfo(np.uint16).max:
        np.save(f"{stem}.npy", labels.astype(np.int32))
    else:
        Image.fromarray(labels.astype(np.uint16)).save(f"{stem}.png")


def _write_label_array(stem: Path, result, probabilities: bool) -> None:
    """``STEM.npy``: the labels of one signal or volume (uint8, or int64 past 255 classes); ``STEM_prob.npy``: float32 (K, ...)."""
    import numpy as np

    mask = result.masks[0]
    np.save(f"{stem}.npy", mask.astype(np.uint8 if mask.max() < 256 else np.int64))
    if probabilities:
        np.save(f"{stem}_prob.npy", result.probabilities[0].astype(np.float32))


def _write_segmentation(file: Path, stem: Path, image, result, num_classes: int, args) -> None:
    """For the input ``file``: ``STEM.png`` (the mask), and with the flags ``STEM_overlay.png`` and ``STEM_prob.png`` / ``.npy``."""
    import numpy as np

    from .images import mask_to_pil, overlay, probability_to_pil

    mask, probabilities = result.masks[0], result.probabilities[0]  # (H, W), (K, H, W)
    mask_to_pil(mask, num_classes, spread=args.mask_values == "spread").save(f"{stem}.png")
    if mask.min() == mask.max():
        # The "all black mask" report: say so, and name the usual cause.
        print(
            f"note: every pixel of {file.name} is class {mask.flat[0]}; if that is unexpected, check that the model "
            "is trained and sees the pixel normalisation it was trained with (image_mean / image_std).",
            file=sys.stderr,
        )
    if args.overlay:
        overlay(image, mask).save(f"{stem}_overlay.png")
    if args.probabilities and len(probabilities) == 2:
        probability_to_pil(probabilities[1]).save(f"{stem}_prob.png")
    elif args.probabilities:
        np.save(f"{stem}_prob.npy", probabilities.astype(np.float32))


# ---------------------------------------------------------------------------- evaluate
def add_evaluate(subparsers) -> None:
    """The ``evaluate`` subcommand."""
    evaluate = add_command(subparsers, "evaluate", run_evaluate, "FID and KID of a folder of samples against a reference folder",
                           api_flags=API_FLAGS)
    evaluate.add_argument("generated", metavar="GENERATED",
                          help="folder of generated images, or a denoiser to sample them from (a pipeline folder, weights file or Hub "
                               "id, as for sample; class-conditional models take the classes in turn unless --class-label)")
    evaluate.add_argument("reference", metavar="REFERENCE", help="folder of reference images (its features are cached)")
    evaluate.add_argument("--features", default=None, metavar="MODULE:FUNCTION",
                          help="your own feature extractor: FUNCTION() in the importable MODULE returns an nn.Module mapping "
                               "(B, 3, H, W) uint8 images to (B, D) features (default: the FID Inception-v3)")
    evaluate.add_argument("--inception-weights", default=None, metavar="PATH",
                          help="local FID Inception weights (weights-inception-2015-12-05-6726825d.pth); "
                               "also $UNET_DIFFUSION_INCEPTION_WEIGHTS; else downloaded once when online")
    evaluate.add_argument("--image-size", type=int, default=None, metavar="N", help="resize every image to N x N first")
    evaluate.add_argument("--batch-size", type=int, default=50, metavar="N", help="images per feature batch and, with a model, per network call (default 50)")
    evaluate.add_argument("--kid-subset-size", type=int, default=1000, metavar="N", help="KID subset size (default 1000, or fewer images)")
    evaluate.add_argument("--no-cache", action="store_true", help="recompute the reference features instead of reading the cache")
    evaluate.add_argument("--json", default=None, metavar="FILE", help="also write the numbers to FILE")
    evaluate.add_argument("--num-images", type=int, default=1000, metavar="N", help="with a model: images to sample (default 1000)")
    _sampling_options(evaluate)
    _device_options(evaluate)


def _is_image_folder(path: str) -> bool:
    """A folder of images, not a model folder (``model_index.json`` / ``config.json``), file or Hub id."""
    return Path(path).is_dir() and source_kind(path) == "other"


def _sampled_features(args, extractor, options: dict):
    """Features of ``--num-images`` images sampled from the model ``args.generated``."""
    import torch
    from torchvision.transforms.v2.functional import pil_to_tensor

    from .evaluation import check_same_size, first_image_size, resized, tensor_features
    from .loading import load_denoise_pipeline

    pipe = _open_pipeline(load_denoise_pipeline, args.generated, args, prediction_type=args.prediction_type)
    labels = args.class_label
    classes = pipe.unet.config.num_class_labels
    if labels is None and classes:
        labels = [i % classes for i in range(args.num_images)]  # the classes in turn
    images = _sample_images(pipe, args, labels)
    check_same_size(images[0].size, first_image_size(args.reference), options["size"])
    pixels = torch.stack([pil_to_tensor(resized(image.convert("RGB"), options["size"])) for image in images])
    return tensor_features(pixels.float() / 255, extractor.to(options["device"]), options["batch_size"])


def run_evaluate(args) -> int:
    """Compare a folder of generated images with a reference folder: Fréchet distance (FID) and kernel distance
    (KID) of their features, by torchmetrics; the reference features are computed once and cached."""
    import json

    sampled = not _is_image_folder(args.generated)
    if sampled:
        _check_sampling(args)  # the flags first: a mistake is reported before torch and diffusers load
    fail_if(
        (not Path(args.reference).is_dir(), f"no folder of reference images at {args.reference}."),
        (args.batch_size < 1, f"--batch-size must be at least 1; got {args.batch_size}."),
        (args.kid_subset_size < 2, f"--kid-subset-size must be at least 2; got {args.kid_subset_size}."),
        (args.image_size is not None and args.image_size < 1, f"--image-size must be a positive number of pixels; got {args.image_size}."),
    )

    from .evaluation import check_same_size, distances, first_image_size, folder_features, load_extractor, reference_features

    if not sampled:
        check_same_size(first_image_size(args.generated), first_image_size(args.reference), args.image_size)
    extractor, name = load_extractor(args.features, args.inception_weights)
    options = dict(batch_size=args.batch_size, size=args.image_size, device=_device(args.device))
    reference = reference_features(args.reference, extractor, name, cache=not args.no_cache, **options)
    generated = _sampled_features(args, extractor, options) if sampled else folder_features(args.generated, extractor, **options)
    scores = distances(generated, reference, args.kid_subset_size)
    print(f"FID {scores['fid']:.4f}  KID {scores['kid']:.6f} +- {scores['kid_std']:.6f}  "
          f"({scores['generated']} generated, {scores['reference']} reference images, features: {name})")
    if args.json:
        Path(args.json).write_text(json.dumps({**scores, "features": name}, indent=2))
    return 0
