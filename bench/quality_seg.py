"""Segmentation quality on the ISBI 2012 EM membranes: train ``configs/isbi2012.yaml`` for a fixed
number of steps on 20 of the 25 image/label pairs, then score the 5 held-out pairs.

    UNET_DATA_DIR=/work/shared/data PYTHONPATH=. python bench/quality_seg.py --quick
    UNET_DATA_DIR=/work/shared/data PYTHONPATH=. python bench/quality_seg.py            # 200 steps, width 16, crop 196
    UNET_DATA_DIR=/data PYTHONPATH=. python bench/quality_seg.py --device cuda --steps 5000 --width 64 --crop 388   # as shipped

Training goes through the package (``train.train`` on the config with overrides): the paper's
network (``ronneberger2015``: valid padding, 572 -> 388 crops), its boundary weight map and elastic
deformation. ``--width`` scales the network's channels (64 -> 128 -> ... -> 1024 at the paper's 64;
``--width 16`` has 1/16 of the multiply-adds), which is what makes a few minutes on a CPU teach it
anything. The held-out images are segmented whole by ``pipelines.SegmentationPipeline`` (overlap-tile)
and compared with their labels:

- **pixel error**: fraction of pixels whose class (membrane / cell) is wrong;
- **Rand error** (foreground-restricted, the ISBI 2012 metric; ``bench.metrics.rand_error``):
  cells are the 4-connected components of the cell pixels, in the label and in the prediction;
  only pixels that are cell in the label count; predicted membrane pixels inside them are segments of
  their own; error = 1 - F-score of the Rand pair-counting precision and recall. The challenge
  scored the submitted membrane *probabilities* at several thresholds and kept the best; here the
  prediction is the argmax (threshold 0.5), so the figure is if anything pessimistic;
- **membrane Dice**: 2|A and B| / (|A| + |B|) of the membrane pixels.

Each is computed per held-out image and averaged. The paper's figures (pixel error 0.0611, Rand
error 0.0382) are on the challenge's 30 test slices, after 5000+ steps on a GPU with 7-rotation
averaging: a row for reference, not a like-for-like comparison.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import numpy as np
import torch
from torchvision.utils import save_image

from bench.common import PROJECT_ROOT, RESULTS_DIR, base_parser, data_dir, describe, format_table, machine_info, setup_device, write_json
from bench.metrics import cell_components, dice, pixel_error, rand_error
from pipelines import SegmentationPipeline
from train import load_config, train
from train.data import open_source, split_indices
from train.segmentation import overlay

CONFIG = PROJECT_ROOT / "configs" / "isbi2012.yaml"
PAPER = {"pixel_error": 0.0611, "rand_error": 0.0382}   # Ronneberger et al. 2015, ISBI 2012 test set
MEMBRANE, CELL = 0, 1                                    # class indices (label pixel values 0 and 255)


def overrides_for(args, run_dir: Path, device: torch.device) -> list[str]:
    """Config overrides: the budget, the network width, and no mid-run evaluation or pictures."""
    width = args.width
    items = [
        f"train.steps={args.steps}", f"train.output_dir={run_dir}", f"train.seed={args.seed}",
        "train.eval_every=0", "train.checkpoint_every=0", "train.log_every=5", "train.progress_bar=false",
        "segmentation.overlay_every=0", "segmentation.num_overlays=1",
        f"data.image_size={args.crop}",
    ]
    if width != 64:
        items.append(f"model.args.channels={[width * 2**i for i in range(5)]}")
    if device.type == "cuda":
        items.append("train.mixed_precision=bf16")
    return items


def main(argv=None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps, batch 1 (default 200; --quick 10)")
    parser.add_argument("--width", type=int, default=None, help="channels of the first level; 64 is the paper's network (default 16; --quick 8)")
    parser.add_argument("--crop", type=int, default=None, help="training output crop side (388 is the paper's; default 196; --quick 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-run", type=Path, default=None, help="train into this folder and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (10 if args.quick else 200)
    args.width = args.width or (8 if args.quick else 16)
    args.crop = args.crop or (100 if args.quick else 196)

    folder = data_dir() / "isbi2012-membrane"
    if not (folder / "image").is_dir() or not (folder / "label").is_dir():
        print(f"skipped: the ISBI 2012 data is not at {folder} (image/ and label/ folders of 25 PNGs each). "
              "Set UNET_DATA_DIR to the folder that holds isbi2012-membrane/.")
        return 0
    os.environ["UNET_DATA_DIR"] = str(data_dir())  # the config reads ${UNET_DATA_DIR}
    device = setup_device(args.device, args.threads)
    info = machine_info(device)

    with tempfile.TemporaryDirectory(prefix="isbi2012-") as tmp:
        run_dir = args.keep_run or Path(tmp) / "run"
        config = load_config(CONFIG, overrides_for(args, run_dir, device))
        started = time.perf_counter()
        result = train(config, log=lambda text: None)
        train_seconds = time.perf_counter() - started
        pipe = SegmentationPipeline.from_pretrained(str(run_dir / "pipeline")).to(device)
        pipe.set_progress_bar_config(disable=True)
        losses = result.losses

        # The held-out pairs: the same split the training run made.
        source = open_source(config)
        _, held_out = split_indices(list(range(len(source))), config.data.val_size, config.train.seed)
        per_image, pictures = [], []
        started = time.perf_counter()
        for index in held_out:
            raw = source.load(index)
            truth = raw.mask                                              # (H, W): 0 membrane, 1 cell
            with torch.no_grad():
                pred = np.asarray(pipe(raw.image).masks[0])               # whole image, overlap-tile
            per_image.append(dict(
                image=Path(source.name(index)).name,
                pixel_error=pixel_error(truth, pred),
                rand_error=rand_error(cell_components(truth == CELL), cell_components(pred == CELL)),
                membrane_dice=dice(truth == MEMBRANE, pred == MEMBRANE),
                membrane_fraction_true=float(np.mean(truth == MEMBRANE)),
                membrane_fraction_pred=float(np.mean(pred == MEMBRANE)),
            ))
            if not pictures:
                image = torch.from_numpy(np.asarray(raw.image, dtype=np.float32) / 127.5 - 1)[None]  # (1, H, W) in [-1, 1]
                pictures = [(image + 1).expand(3, -1, -1) / 2, overlay(image, torch.from_numpy(truth)),
                            overlay(image, torch.from_numpy(pred))]
        eval_seconds = time.perf_counter() - started

    mean = {key: float(np.mean([r[key] for r in per_image])) for key in ("pixel_error", "rand_error", "membrane_dice")}
    name = "quality_seg_quick" if args.quick else "quality_seg"
    picture = RESULTS_DIR / f"{name}_overlay.png"
    picture.parent.mkdir(parents=True, exist_ok=True)
    # Half size keeps the file small; left: image, middle: truth, right: prediction (cells tinted).
    grid = torch.nn.functional.interpolate(torch.stack(pictures), scale_factor=0.5, mode="area")
    save_image(grid, picture, nrow=3, padding=4, pad_value=1.0)

    params = sum(p.numel() for p in pipe.unet.parameters())
    first, last = (losses[min(losses)], losses[max(losses)]) if losses else (float("nan"), float("nan"))
    payload = dict(machine=info, quick=args.quick, steps=args.steps, width=args.width, crop=args.crop, parameters=params,
                   held_out=[r["image"] for r in per_image], train_seconds=train_seconds, eval_seconds=eval_seconds,
                   loss_first=first, loss_last=last, losses=losses, per_image=per_image, mean=mean, paper=PAPER,
                   overrides=overrides_for(args, Path("RUN"), device), overlay=str(picture))
    path = write_json(name, payload, args.out)

    rows = [{"run": f"ours: {args.steps} steps, width {args.width} ({params / 1e6:.2f}M params), {len(per_image)} held-out images",
             "pixel error": f"{mean['pixel_error']:.4f}", "Rand error": f"{mean['rand_error']:.4f}",
             "membrane Dice": f"{mean['membrane_dice']:.4f}"},
            {"run": "paper (challenge test set, full training, 7-rotation averaging)",
             "pixel error": f"{PAPER['pixel_error']:.4f}", "Rand error": f"{PAPER['rand_error']:.4f}", "membrane Dice": "-"}]
    print(f"ISBI 2012 membranes: {describe(info)}. Trained {args.steps} steps (batch 1, crop {args.crop}) in {train_seconds:.0f} s, "
          f"loss {first:.3f} -> {last:.3f}; held out {', '.join(r['image'] for r in per_image)} (scored in {eval_seconds:.0f} s).")
    if device.type == "cpu":
        print("CPU only, no GPU here: this budget is tiny (the shipped config trains the full-width network for 5000 steps), "
              "so the numbers say the pipeline works end to end, not what the architecture reaches.")
    print(f"overlay (image | truth | prediction, cells tinted): {picture}; JSON: {path}")
    print(format_table(rows, ["run", "pixel error", "Rand error", "membrane Dice"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
