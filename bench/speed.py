"""Training-step and inference speed of our U-Net against diffusers' ``UNet2DModel`` on the same
architecture, with the same weights (``unet_diffusion.to_diffusers``), inputs, device, precision
and batch.

    python -m bench.speed --quick                      # ddpm-cifar10, float32, batch 2
    python -m bench.speed                              # ddpm-cifar10 and ddpm-64, every variant
    python -m bench.speed --device cuda --batch 128 --configs ddpm-cifar10 --variants bf16 bf16-compile

Variants combine ``bf16`` (autocast), ``cl`` (channels_last) and ``compile`` (``torch.compile``)
with ``-``; ``fp32`` is plain float32 eager. A training step is forward, MSE loss against noise,
backward and an Adam step. Images/s are medians of interleaved repeats (ours, diffusers, diffusers,
ours, ...), with the spread; ``ratio`` is ours / diffusers (above 1: we are faster). Peak memory is
that of one training step above what was held before it (weights, gradients freed between steps,
Adam state): ``torch.cuda.max_memory_allocated`` on CUDA, live tensor bytes on CPU. MFU is model
FLOPs (forward + backward, counted by ``FlopCounterMode``) per second over the peak of a large
matmul measured on the same device and dtype.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time

import torch
import torch.nn.functional as F

from bench.common import (
    Bench,
    count_flops,
    describe,
    fmt_rate,
    format_table,
    matmul_peak_flops,
    peak_memory,
    run_bench,
    time_interleaved,
)
from unet_diffusion import UNet, to_diffusers
from unet_diffusion.presets import preset_config

# Architectures benchmarked: the DDPM CIFAR-10 network, and a DDPM-CelebAHQ-like network at 64x64
# (same block types, one more level, attention at 16x16) small enough to time on a CPU.
CONFIGS = {
    "ddpm-cifar10": preset_config("ddpm-cifar10"),
    "ddpm-64": preset_config(
        "ddpm-cifar10", sample_size=64, channels=(64, 128, 256, 256), attention_levels=(2,)
    ),
}
DEFAULT_VARIANTS = ["fp32", "bf16", "cl", "compile"]


def parse_variant(name: str) -> dict:
    """``"bf16-cl-compile"`` -> dict(bf16=True, channels_last=True, compile=True)."""
    parts = set(name.split("-")) - {"fp32"}
    unknown = parts - {"bf16", "cl", "compile"}
    if unknown:
        raise ValueError(f"unknown variant part(s) {sorted(unknown)} in {name!r}; combine bf16, cl, compile with '-', or fp32.")
    return dict(bf16="bf16" in parts, channels_last="cl" in parts, compile="compile" in parts)


def build_pair(config: dict, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, float]:
    """Our model and diffusers' with converted weights, and the max |difference| of their outputs."""
    torch.manual_seed(0)
    ours = UNet(**config).eval()
    theirs = copy.deepcopy(to_diffusers(ours)).eval()  # deepcopy: no storage shared with ours
    ours, theirs = ours.to(device), theirs.to(device)
    size = config["sample_size"]
    x = torch.randn(2, config["in_channels"], size, size, device=device)
    t = torch.tensor([10, 900], device=device)
    with torch.no_grad():
        diff = (ours(x, t).sample - theirs(x, t).sample).abs().max().item()
    return ours, theirs, diff


def make_step(model, mode: str, variant: dict, x, t, noise, device):
    """A closure running one training step (``mode="train"``) or one inference forward."""
    model.train(mode == "train")
    if variant["channels_last"]:
        model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if variant["compile"] else model
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if variant["bf16"] else contextlib.nullcontext
    )
    if mode == "infer":

        def step():
            with torch.no_grad(), autocast():
                return fwd(x, t).sample

        return step
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        with autocast():
            loss = F.mse_loss(fwd(x, t).sample.float(), noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_config(name: str, batch: int, variants: list[str], modes: list[str], repeats: int, device, peaks, clock: str,
                 warmup: int = 1) -> tuple[list, dict]:
    config = CONFIGS[name]
    ours, theirs, diff = build_pair(config, device)
    print(f"{name}: {ours.num_parameters():,} parameters, max |ours - diffusers| = {diff:.2e}", flush=True)
    size = config["sample_size"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, config["in_channels"], size, size, generator=g).to(device)
    noise = torch.randn(x.shape, generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)

    # Model FLOPs of one training step / one forward, counted once on the eager float32 model.
    flops = {}
    for mode in modes:
        step = make_step(ours, mode, parse_variant("fp32"), x, t, noise, device)
        flops[mode] = count_flops(step)

    rows = []
    for variant_name in variants:
        variant = parse_variant(variant_name)
        xv = x.to(memory_format=torch.channels_last) if variant["channels_last"] else x
        for mode in modes:
            # Fresh copies per variant: channels_last and compile change the modules they touch.
            models = {"ours": copy.deepcopy(ours), "diffusers": copy.deepcopy(theirs)}
            steps = {k: make_step(m, mode, variant, xv, t, noise, device) for k, m in models.items()}
            start = time.perf_counter()
            for s in steps.values():
                s()  # first call: compilation, oneDNN primitive creation, Adam state
            warm_s = time.perf_counter() - start
            times = time_interleaved(steps, device, repeats=repeats, warmup=warmup, clock=clock)
            mem = {}
            if mode == "train" and not (variant["compile"] and device.type == "cpu"):
                mem = {k: peak_memory(s, device) for k, s in steps.items()}  # the CPU tracker cannot see inside compiled code
            peak = peaks["bf16" if variant["bf16"] else "fp32"]
            row = dict(config=name, batch=batch, variant=variant_name, mode=mode)
            for k in ("ours", "diffusers"):
                row[f"{k} img/s"] = fmt_rate(times[k], batch)
                row[f"{k} MFU"] = f"{100 * flops[mode] / times[k]['median'] / peak:.1f}%"
                if mem:
                    row[f"{k} MB"] = f"{mem[k] / 2**20:.0f}"
            row["speed ratio"] = f"{times['diffusers']['median'] / times['ours']['median']:.2f}x"
            if mem:
                row["mem ratio"] = f"{mem['ours'] / mem['diffusers']:.2f}x"
            row["_raw"] = dict(times=times, peak_bytes=mem, flops=flops[mode], first_call_s=warm_s, matmul_peak=peak)
            rows.append(row)
            print(format_table([row], COLUMNS), flush=True)
            del models, steps
    return rows, dict(parameters=ours.num_parameters(), max_abs_diff=diff, flops=flops)


COLUMNS = [
    "config", "batch", "variant", "mode", "ours img/s", "diffusers img/s", "speed ratio",
    "ours MB", "diffusers MB", "mem ratio", "ours MFU", "diffusers MFU",
]


def options(parser) -> None:
    parser.add_argument("--configs", nargs="+", default=None, choices=sorted(CONFIGS))
    parser.add_argument("--variants", nargs="+", default=None, help=f"default: {' '.join(DEFAULT_VARIANTS)}")
    parser.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 8 on CPU, 128 on CUDA; 2 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per contender (default 7, 2 with --quick)")


def measure(bench: Bench) -> None:
    args, device, quick = bench.args, bench.device, bench.args.quick
    configs = args.configs or (["ddpm-cifar10"] if quick else list(CONFIGS))
    variants = args.variants or (["fp32"] if quick else DEFAULT_VARIANTS + (["bf16-compile"] if device.type == "cuda" else []))
    for v in variants:
        try:
            parse_variant(v)
        except ValueError as err:
            bench.error(str(err))
    batch = args.batch or (2 if quick else 8 if device.type == "cpu" else 128)
    repeats = args.repeats or (2 if quick else 7)
    print(f"machine: {describe(bench.info)}", flush=True)

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {dt: matmul_peak_flops(device, dtype, clock=args.clock) for dt, dtype in dtypes.items()}
    print(f"measured matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s", flush=True)
    rows, checks = [], {}
    for name in configs:
        r, checks[name] = bench_config(name, batch, variants, args.modes, repeats, device, peaks, args.clock,
                                       warmup=0 if quick else 1)
        rows += r
        payload = dict(args={k: str(v) for k, v in vars(args).items()}, matmul_peak_flops=peaks, checks=checks, rows=rows)
        bench.save(payload)  # after each config, so a cut-short run keeps what it measured
    bench.report(payload, rows, COLUMNS, f"\n{describe(bench.info)}; images/s ({args.clock} clock) median (min-max) of {repeats} "
                 "interleaved repeats; ratio = ours / diffusers")


def main(argv=None) -> int:
    return run_bench("speed", __doc__, options, measure, argv)


if __name__ == "__main__":
    sys.exit(main())
