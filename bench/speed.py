"""Training-step and inference speed of our U-Net against diffusers' ``UNet2DModel`` on the same
architecture, with the same weights (``unet_diffusion.to_diffusers``), inputs, device, precision
and batch; and of our 3D U-Net (``dims=3``) against MONAI's ``DiffusionModelUNet`` built with the
same levels, blocks, attention and widths (its own initialisation: MONAI's weights do not convert),
on the same volumes.

    python -m bench.speed --quick                      # ddpm-cifar10, float32, batch 2
    python -m bench.speed                              # ddpm-cifar10 and ddpm-64, every variant
    python -m bench.speed --device cuda --batch 128 --configs ddpm-cifar10 --variants bf16 bf16-compile
    python -m bench.speed --configs ldm-3d --variants fp32 bf16   # the 3D row (pip install monai)

Variants combine ``bf16`` (autocast), ``cl`` (channels_last) and ``compile`` (``torch.compile``)
with ``-``; ``fp32`` is plain float32 eager (``cl`` does not apply to volumes). A training step is forward, MSE loss against noise,
backward and an Adam step. Images/s are medians of interleaved repeats (ours, peer, peer,
ours, ...), with the spread; ``speed ratio`` is the peer's step time over ours (above 1: we are faster). Peak memory is
that of one training step above what was held before it (weights, gradients freed between steps,
Adam state): ``torch.cuda.max_memory_allocated`` on CUDA, live tensor bytes on CPU. MFU is model
FLOPs (forward + backward, counted by ``FlopCounterMode``) per second over the device's peak in that
dtype: the larger of a large matmul measured on the same device and, on a CPU, the theoretical peak
(cores x clock x FLOPs per cycle of its vector ISA, ``bench.common.peak_flops``).
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from bench.common import (
    Bench,
    count_flops,
    describe,
    fmt_rate,
    format_table,
    peak_flops,
    peak_memory,
    provenance,
    run_bench,
    time_interleaved,
)
from unet_diffusion import UNet, to_diffusers
from unet_diffusion.inputs import model_dims
from unet_diffusion.presets import preset_config

# Architectures benchmarked: the DDPM CIFAR-10 network, and a DDPM-CelebAHQ-like network at 64x64
# (same block types, one more level, attention at 16x16) small enough to time on a CPU.
CONFIGS = {
    "ddpm-cifar10": preset_config("ddpm-cifar10"),
    "ddpm-64": preset_config(
        "ddpm-cifar10", sample_size=64, channels=(64, 128, 256, 256), attention_levels=(2,)
    ),
    # A 3D denoiser with the layout of MONAI's DiffusionModelUNet defaults (widths 32/64/64/64, 2 residual blocks a
    # level, attention with 8-channel heads at the two lowest levels and in the middle), on 32^3 volumes.
    "ldm-3d": dict(
        sample_size=32, dims=3, in_channels=1, channels=(32, 64, 64, 64), blocks_per_level=2, attention_levels=(2, 3),
        mid_attention=True, attention_head_channels=8, norm_eps=1e-6, flip_sin_to_cos=True, freq_shift=0,
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


def peer_name(config: dict) -> str:
    """Who our model races: diffusers for images, MONAI for volumes."""
    return "monai" if model_dims(config) == 3 else "diffusers"


class MonaiDenoiser(torch.nn.Module):
    """MONAI's ``DiffusionModelUNet`` answering ``(x, t) -> .sample`` like ours and diffusers'."""

    def __init__(self, config: dict):
        super().__init__()
        try:
            from monai.networks.nets import DiffusionModelUNet
        except ImportError:
            raise SystemExit("the 3D row races MONAI's DiffusionModelUNet: pip install monai (or the bench extra)") from None
        levels = len(config["channels"])
        self.net = DiffusionModelUNet(
            spatial_dims=config["dims"], in_channels=config["in_channels"], out_channels=config["in_channels"],
            num_res_blocks=config["blocks_per_level"], channels=config["channels"],
            attention_levels=[level in config["attention_levels"] for level in range(levels)],
            num_head_channels=config["attention_head_channels"], norm_eps=config["norm_eps"],
        )

    def forward(self, x, t):
        return SimpleNamespace(sample=self.net(x, t))


def build_pair(config: dict, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, float | None]:
    """Our model and the peer's: diffusers' with converted weights and the max |difference| of their outputs, or
    MONAI's of the same layout (its own weights: no difference to report)."""
    torch.manual_seed(0)
    ours = UNet(**config).eval()
    if peer_name(config) == "monai":
        return ours.to(device), MonaiDenoiser(config).eval().to(device), None
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
    peer = peer_name(config)
    ours, theirs, diff = build_pair(config, device)
    theirs_count = sum(p.numel() for p in theirs.parameters())
    same = f"max |ours - {peer}| = {diff:.2e}" if diff is not None else f"{peer}: {theirs_count:,} parameters (its own weights)"
    print(f"{name}: {ours.num_parameters():,} parameters, {same}", flush=True)
    size = config["sample_size"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, config["in_channels"], *(size,) * model_dims(config), generator=g).to(device)
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
        if variant["channels_last"] and x.ndim != 4:
            print(f"{name}: skipped {variant_name} (channels_last is for images)", flush=True)
            continue
        xv = x.to(memory_format=torch.channels_last) if variant["channels_last"] else x
        for mode in modes:
            # Fresh copies per variant: channels_last and compile change the modules they touch.
            models = {"ours": copy.deepcopy(ours), peer: copy.deepcopy(theirs)}
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
            for k in ("ours", peer):
                row[f"{k} img/s"] = fmt_rate(times[k], batch)
                row[f"{k} MFU"] = f"{100 * flops[mode] / times[k]['median'] / peak:.1f}%"
                if mem:
                    row[f"{k} MB"] = f"{mem[k] / 2**20:.0f}"
            row["speed ratio"] = f"{times[peer]['median'] / times['ours']['median']:.2f}x"
            if mem:
                row["mem ratio"] = f"{mem['ours'] / mem[peer]:.2f}x"
            row["_raw"] = dict(times=times, peak_bytes=mem, flops=flops[mode], first_call_s=warm_s, matmul_peak=peak)
            rows.append(row)
            print(format_table([row], COLUMNS), flush=True)
            del models, steps
    return rows, dict(parameters=ours.num_parameters(), peer=peer, peer_parameters=theirs_count, max_abs_diff=diff, flops=flops)


COLUMNS = [  # a row fills the columns of its peer (diffusers for images, MONAI for volumes); the others print "-"
    "config", "batch", "variant", "mode", "ours img/s", "diffusers img/s", "monai img/s", "speed ratio",
    "ours MB", "diffusers MB", "monai MB", "mem ratio", "ours MFU", "diffusers MFU", "monai MFU",
]


def options(parser) -> None:
    parser.add_argument("--configs", nargs="+", default=None, choices=sorted(CONFIGS))
    parser.add_argument("--variants", nargs="+", default=None, help=f"default: {' '.join(DEFAULT_VARIANTS)}")
    parser.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 8 on CPU, 128 on CUDA; 2 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per contender (default 7, 2 with --quick)")


def measure(bench: Bench) -> None:
    args, device, quick = bench.args, bench.device, bench.args.quick
    configs = args.configs or (["ddpm-cifar10"] if quick else [name for name, c in CONFIGS.items() if peer_name(c) == "diffusers"])
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
    peak_detail = {dt: peak_flops(device, dtype, clock=args.clock) for dt, dtype in dtypes.items()}
    peaks = {dt: detail["peak"] for dt, detail in peak_detail.items()}
    gflops = lambda value: "-" if value is None else f"{value / 1e9:.0f}"
    print("peak (MFU's denominator) = max(matmul probe, theoretical): " + "; ".join(
        f"{dt} {gflops(d['peak'])} GFLOP/s (probe {gflops(d['probe'])}, theoretical {gflops(d['theoretical'])})"
        for dt, d in peak_detail.items()), flush=True)
    rows, checks = [], {}
    for name in configs:
        r, checks[name] = bench_config(name, batch, variants, args.modes, repeats, device, peaks, args.clock,
                                       warmup=0 if quick else 1)
        rows += r
        payload = dict(**provenance(), args={k: str(v) for k, v in vars(args).items()}, matmul_peak_flops=peaks, peak_flops=peak_detail,
                       checks=checks, rows=rows)
        bench.save(payload)  # after each config, so a cut-short run keeps what it measured
    bench.report(payload, rows, COLUMNS, f"\n{describe(bench.info)}; images/s ({args.clock} clock) median (min-max) of {repeats} "
                 "interleaved repeats; speed ratio = peer's step time / ours (above 1: we are faster)")


def main(argv=None) -> int:
    return run_bench("speed", __doc__, options, measure, argv)


if __name__ == "__main__":
    sys.exit(main())
