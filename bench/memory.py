"""Peak memory of one training step, with and without gradient checkpointing, our U-Net against
diffusers' ``UNet2DModel`` on the same architecture.

    python -m bench.memory --quick          # ddpm-cifar10, batch 2 (a smoke test: Adam, not activations, sets the peak)
    python -m bench.memory                  # ddpm-cifar10 batch 16, ddpm-64 batch 8
    python -m bench.memory --device cuda --batch 128

Each measurement runs in a fresh process, so no allocator cache or earlier peak hides anything.
The process builds one model and its input, runs one training step (forward, MSE loss, backward,
Adam step) and then measures a second one, the steady state of training: the peak memory the
step needs above what is held between steps (weights and Adam state):

- CPU: the peak of live tensor bytes during the step (``bench.common.LiveTensorBytes``); as a
  cross-check independent of that tracker, the growth of the process's peak resident set
  (``ru_maxrss``) over the *first* step, which also holds the Adam state that step creates;
- CUDA: ``torch.cuda.max_memory_allocated`` during the step, less what was allocated before.

The peak includes the gradients and Adam's temporaries, equal for both models (same parameters);
the difference between the models is their activations, so choose a batch where those matter.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
import torch.nn.functional as F

from bench.common import PROJECT_ROOT, Bench, LiveTensorBytes, describe, format_table, run_bench
from bench.speed import CONFIGS


def measure(config_name: str, model_kind: str, checkpointing: bool, batch: int, device: torch.device) -> dict:
    """One training step of one freshly built model; bytes needed above the model's own (child process)."""
    from unet_diffusion import UNet
    from unet_diffusion.convert import diffusers_class, diffusers_config

    config = CONFIGS[config_name]
    torch.manual_seed(0)
    if model_kind == "ours":
        model = UNet(**config)
    else:  # the same architecture; its weights' values do not matter for memory
        with torch.device("meta"):
            skeleton = UNet(**config)
        class_name, fields = diffusers_config(skeleton.config)
        model = diffusers_class(class_name)(**fields)
    model = model.to(device).train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    size = config["sample_size"]
    x = torch.randn(batch, config["in_channels"], size, size, device=device)
    noise = torch.randn_like(x)
    t = torch.randint(0, 1000, (batch,), device=device)

    def step():
        loss = F.mse_loss(model(x, t).sample, noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    result = dict(parameters=model.num_parameters())
    if device.type == "cuda":
        step()  # the Adam state exists from here on, as in any later step of training
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device) - before
        return result
    # First step: growth of the peak resident set (it also holds the Adam state this step creates).
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    result["rss_bytes"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # Linux reports KiB
    # Second step, the steady state of training: peak of the tensors it allocates.
    with LiveTensorBytes() as tracker:
        step()
    result["peak_bytes"] = tracker.peak
    return result


def run_child(args: list[str]) -> dict:
    """Run ``measure`` in a fresh Python process and return its JSON result."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.memory", "--child", *args], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    if proc.returncode:
        raise RuntimeError(f"measurement {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


COLUMNS = ["config", "batch", "checkpointing", "ours MB", "diffusers MB", "ratio", "ours RSS MB", "diffusers RSS MB", "RSS ratio"]


def options(parser) -> None:
    parser.add_argument("--configs", nargs="+", default=None, choices=sorted(CONFIGS))
    parser.add_argument("--batch", type=int, default=None,
                        help="batch (default: 16 for ddpm-cifar10 and 8 for ddpm-64 on CPU, 128 on CUDA; 2 with --quick)")
    parser.add_argument("--child", nargs=4, metavar=("CONFIG", "MODEL", "CKPT", "BATCH"), help=argparse.SUPPRESS)


def memory_row(name: str, batch: int, ckpt: bool, res: dict) -> dict:
    """A table row from the children's results ``{"ours": ..., "diffusers": ...}``."""
    row = {"config": name, "batch": batch, "checkpointing": "on" if ckpt else "off"}
    for kind in ("ours", "diffusers"):
        row[f"{kind} MB"] = f"{res[kind]['peak_bytes'] / 2**20:.0f}"
        if "rss_bytes" in res[kind]:
            row[f"{kind} RSS MB"] = f"{res[kind]['rss_bytes'] / 2**20:.0f}"
    row["ratio"] = f"{res['ours']['peak_bytes'] / res['diffusers']['peak_bytes']:.2f}x"
    if "rss_bytes" in res["ours"]:
        row["RSS ratio"] = f"{res['ours']['rss_bytes'] / max(res['diffusers']['rss_bytes'], 1):.2f}x"
    row["_raw"] = res
    return row


def measure_all(bench: Bench) -> None:
    args, device = bench.args, bench.device
    if args.child:
        name, kind, ckpt, batch = args.child
        print(json.dumps(measure(name, kind, ckpt == "1", int(batch), device)))
        return
    print(f"machine: {describe(bench.info)}", flush=True)
    configs = args.configs or (["ddpm-cifar10"] if args.quick else list(CONFIGS))
    default_batch = {"ddpm-cifar10": 16, "ddpm-64": 8} if device.type == "cpu" else {}
    common = ["--device", str(device)] + (["--threads", str(args.threads)] if args.threads else [])
    rows = []
    for name in configs:
        batch = args.batch or (2 if args.quick else default_batch.get(name, 128))
        for ckpt in (False, True):
            res = {kind: run_child([name, kind, str(int(ckpt)), str(batch), *common]) for kind in ("ours", "diffusers")}
            rows.append(memory_row(name, batch, ckpt, res))
            print(format_table(rows[-1:], COLUMNS), flush=True)
    what = (
        "MB = peak live tensor bytes of a steady-state training step; RSS = peak resident-set growth over the first step "
        "(fresh process each)" if device.type == "cpu" else "MB = max_memory_allocated over a steady-state training step"
    )
    bench.report(dict(args={k: str(v) for k, v in vars(args).items()}, rows=rows), rows, COLUMNS,
                 f"\n{describe(bench.info)}; {what}; ratio = ours / diffusers")


def main(argv=None) -> int:
    return run_bench("memory", __doc__, options, measure_all, argv)


if __name__ == "__main__":
    sys.exit(main())
