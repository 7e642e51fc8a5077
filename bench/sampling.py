"""DDIM sampling speed: our ``DenoisePipeline`` against diffusers' ``DDIMPipeline`` running the same
network.

    python -m bench.sampling --quick               # tiny at 16x16, batch 4, 50 steps, 3 repeats
    python -m bench.sampling                       # ddpm-cifar10 and tiny (32x32), batch 4
    python -m bench.sampling --device cuda --batch 64 --configs ddpm-cifar10

Both pipelines get the same network (diffusers' side is ``unet_diffusion.to_diffusers(ours)``, a
``UNet2DModel`` with converted weights, so both compute the same function), the same DDIM schedule
(1000 linear training steps, epsilon prediction, 50 sampling steps, eta 0), the same seed and
batch. The weights are random: sampling speed does not depend on them. Equal outputs are checked
all the same, in float64 on one image: with random weights the DDIM iteration amplifies rounding
differences (about tenfold every 10 steps), so in float32 two correct implementations drift apart
over 50 steps, while in float64 the drift stays far below one gray level. The check's largest pixel
difference (on the 0..1 scale) is reported.
Images/s are medians of interleaved repeats (ours, diffusers, diffusers, ours, ...) with the
spread; ``ratio`` is ours / diffusers (above 1: we are faster).
"""

from __future__ import annotations

import copy
import sys

import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler
from diffusers.utils import logging as diffusers_logging

from bench.common import Bench, describe, fmt_rate, fmt_spread, run_bench, time_interleaved
from pipelines import DenoisePipeline
from unet_diffusion import UNet, to_diffusers
from unet_diffusion.presets import preset_config

# Networks timed: the DDPM CIFAR-10 U-Net (35.7M parameters), the 1.1M-parameter `tiny`, and `tiny`
# at 16x16 for --quick (a quarter of the pixels, so the run fits in a minute on 2 busy cores).
CONFIGS = {
    "ddpm-cifar10": preset_config("ddpm-cifar10"),
    "tiny": preset_config("tiny"),
    "tiny-16": preset_config("tiny", sample_size=16),
}


def build_pipelines(name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[DenoisePipeline, DDIMPipeline]:
    """Ours and diffusers' pipeline over the same (converted) network and training schedule."""
    torch.manual_seed(0)
    ours = UNet(**CONFIGS[name]).eval().to(device=device, dtype=dtype)
    theirs = copy.deepcopy(to_diffusers(ours)).eval().to(device=device, dtype=dtype)  # deepcopy: no storage shared with ours
    schedule = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    mine = DenoisePipeline(unet=ours, scheduler=schedule)
    reference = DDIMPipeline(unet=theirs, scheduler=DDIMScheduler.from_config(schedule.config))
    for pipe in (mine, reference):
        pipe.set_progress_bar_config(disable=True)
    return mine, reference


COLUMNS = ["model", "pipeline", "batch", "steps", "images/s (spread)", "s/call", "ratio", "max diff"]


def options(parser) -> None:
    parser.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS),
                        help="networks to time (default: ddpm-cifar10 and tiny; --quick: tiny-16)")
    parser.add_argument("--batch", type=int, default=4, help="images per pipeline call")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls of each pipeline (default 3, --quick 3)")


def time_pipelines(bench: Bench, preset: str, repeats: int) -> tuple[list[dict], dict]:
    """Check the two pipelines agree (float64, one image), then time them: two table rows and the JSON entry."""
    args, device = bench.args, bench.device

    def sample(pipe, batch: int, **extra):
        generator = torch.Generator(device).manual_seed(0)
        return pipe(batch_size=batch, num_inference_steps=args.steps, eta=0.0, generator=generator, output_type="np",
                    **extra).images

    mine, reference = build_pipelines(preset, device, torch.float64)
    difference = float(abs(sample(mine, 1, sampler="ddim") - sample(reference, 1, use_clipped_model_output=True)).max())
    mine, reference = build_pipelines(preset, device)
    ours = lambda: sample(mine, args.batch, sampler="ddim")
    diffusers = lambda: sample(reference, args.batch)
    timings = time_interleaved({"ours": ours, "diffusers": diffusers}, device, repeats, warmup=1, clock=args.clock)
    per_second = {name: args.batch / t["median"] for name, t in timings.items()}
    ratio = per_second["ours"] / per_second["diffusers"]
    rows = [{
        "model": preset, "pipeline": name, "batch": args.batch, "steps": args.steps,
        "images/s (spread)": fmt_rate(timings[name], args.batch, digits=2),
        "s/call": fmt_spread(timings[name], digits=2),
        "ratio": f"{ratio:.2f}x" if name == "ours" else "",
        "max diff": f"{difference:.1e}" if name == "ours" else "",
    } for name in ("ours", "diffusers")]
    return rows, dict(model=preset, batch=args.batch, steps=args.steps, timings=timings, images_per_second=per_second,
                      ratio=ratio, max_abs_image_difference=difference)


def measure(bench: Bench) -> None:
    args = bench.args
    diffusers_logging.set_verbosity_error()  # its note on casting models with .to(float64) is not news here
    configs = args.configs or (["tiny-16"] if args.quick else ["ddpm-cifar10", "tiny"])
    repeats = args.repeats or 3
    rows, results = [], []
    for preset in configs:
        preset_rows, result = time_pipelines(bench, preset, repeats)
        rows += preset_rows
        results.append(result)
    lines = [f"DDIM sampling, {args.steps} steps, eta 0: {describe(bench.info)}; median of {repeats} interleaved calls, "
             f"ratio = ours / diffusers images/s (target >= 1.3x); max diff = largest pixel difference (0..1) of the two "
             f"pipelines' images from the same noise (float64, one image)."]
    if bench.device.type == "cpu":
        lines.append("CPU only here: no GPU in this run (on CUDA, use --device cuda and a larger --batch).")
    bench.report(dict(quick=args.quick, repeats=repeats, results=results), rows, COLUMNS, *lines)


def main(argv=None) -> int:
    return run_bench("sampling", __doc__, options, measure, argv)


if __name__ == "__main__":
    sys.exit(main())
