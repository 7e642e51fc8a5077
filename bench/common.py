"""The one entry of every benchmark and the helpers they share: devices, timing with interleaved
repeats, memory, FLOPs, tables, JSON and pictures.

Each benchmark is a module run as ``python -m bench.NAME``; its ``main`` is
``run_bench(NAME, __doc__, options, measure)``: ``base_parser`` gives the options every benchmark takes
(``--quick``, ``--device``, ``--threads``, ``--clock``, ``--out``), ``options`` adds the benchmark's
own, the entry checks them and sets up the device and threads, and ``measure`` runs the benchmark
with a ``Bench`` and ends with ``Bench.report``: the JSON (``machine`` first) and the Markdown table last.

Every benchmark compares two (or more) contenders in the same process, on the same device, with
the same inputs. Timings on a shared machine drift, so contenders are timed in turns
(A, B, A, B, ...) and summarised by the median with the spread (min..max) beside it; the ratio
of medians is what the README reports.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------- the entry
def data_dir() -> Path:
    """Where the datasets live: ``$UNET_DATA_DIR``, else ``../shared/data`` beside the project root."""
    return Path(os.environ.get("UNET_DATA_DIR") or PROJECT_ROOT.parent / "shared" / "data").resolve()


def positive(kind: type) -> Callable[[str], float]:
    """An argparse type: ``kind(text)``, refused unless above 0."""

    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive; got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def base_parser(doc: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--quick``, ``--device``, ``--threads``, ``--clock``, ``--out``.

    ``doc`` is the module's docstring; its first paragraph describes the benchmark in ``--help``.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run that finishes in under a minute on 2 CPU cores")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=positive(int), default=None, help="CPU threads for torch (default: all cores)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="time by wall clock, or by process CPU time (CPU only; use with --threads 1 on a busy machine)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file for the results (default: bench/results/<name>.json, <name>_quick.json with --quick)")
    return parser


def setup_device(name: str | None, threads: int | None) -> torch.device:
    """Resolve ``--device`` (auto: CUDA when present) and pin the CPU thread count explicitly."""
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch sees no CUDA device here; use --device cpu (or leave --device out).")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what a user training in float32 on Ampere+ gets
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return device


@dataclass
class Bench:
    """One run of a benchmark: its parsed arguments and device, and where its results go."""

    name: str                                    # results name: bench/results/<name>[_quick].json
    args: argparse.Namespace
    device: torch.device
    parser: argparse.ArgumentParser

    @functools.cached_property
    def info(self) -> dict:
        """The machine (``machine_info``), the first entry of every results JSON."""
        return machine_info(self.device)

    @property
    def results_dir(self) -> Path:
        """Where pictures go: beside ``--out``, else ``bench/results``."""
        return self.args.out.parent if self.args.out else RESULTS_DIR

    def results_name(self, variant: str | None = None) -> str:
        """``<name>[_<variant>][_quick]``: the stem of the JSON and of the pictures beside it."""
        return "_".join([self.name, *([variant] if variant else []), *(["quick"] if self.args.quick else [])])

    def error(self, message: str) -> NoReturn:
        """Stop with a usage error (exit status 2), as for a bad option."""
        self.parser.error(message)

    def has_data(self, *paths: str, what: str) -> bool:
        """Whether ``paths`` (relative to ``data_dir()``) exist; if so ``$UNET_DATA_DIR`` names that folder
        (the configs read it), else say the benchmark is skipped and what to set."""
        missing = [p for p in paths if not (data_dir() / p).exists()]
        if missing:
            print(f"skipped: {what} is not under {data_dir()} (no {', '.join(missing)}). "
                  "Set UNET_DATA_DIR to the folder that holds it.")
            return False
        os.environ["UNET_DATA_DIR"] = str(data_dir())
        return True

    def save(self, payload: dict, name: str | None = None) -> Path:
        """Write ``{"machine": ..., **payload}`` to ``--out`` (default ``bench/results/<name>.json``)."""
        return write_json(name or self.results_name(), dict(machine=self.info, **payload), self.args.out)

    def report(self, payload: dict, rows: list[dict], columns: Sequence[str], *lines: str, name: str | None = None) -> Path:
        """Save the JSON, print ``lines`` and its path, then the Markdown table of ``rows`` last."""
        path = self.save(payload, name)
        for line in (*lines, f"JSON: {path}"):
            print(line)
        print()
        print(format_table(rows, columns))
        return path


def run_bench(name: str, doc: str, options: Callable[[argparse.ArgumentParser], None], measure: Callable[[Bench], object],
              argv: Sequence[str] | None = None, *, timed: bool = True) -> int:
    """The one entry of every benchmark (``python -m bench.<name>``): parse, check, set up, measure.

    ``options`` adds the benchmark's own arguments to the shared ones (``base_parser``); ``measure``
    runs it with the ``Bench`` (arguments, device) and reports through ``Bench.report``. ``timed=False``
    for a benchmark that does not time with ``--clock`` (it budgets wall time): it refuses ``--clock cpu``.
    Returns the exit status.
    """
    parser = base_parser(doc)
    parser.prog = f"python -m bench.{name}"
    options(parser)
    args = parser.parse_args(argv)
    if not timed and args.clock != "wall":
        parser.error(f"bench.{name} runs by wall time only (its budgets and timings); --clock cpu does not apply.")
    try:
        device = setup_device(args.device, args.threads)
    except (RuntimeError, ValueError) as err:  # RuntimeError: torch's own for a malformed device string
        parser.error(str(err))
    if args.clock == "cpu" and device.type != "cpu":
        parser.error(f"--clock cpu measures process CPU time, which does not see {device}; use --clock wall there.")
    return int(measure(Bench(name, args, device, parser)) or 0)


def quiet_progress_bars() -> None:
    """No progress bars from datasets (reading parquet files) or diffusers (loading pipelines)."""
    import datasets
    from diffusers.utils import logging as diffusers_logging

    datasets.disable_progress_bars()
    diffusers_logging.disable_progress_bar()


def cpu_features(cpuinfo: str | None = None) -> dict:
    """What ``/proc/cpuinfo`` (or the text given) says of the CPU: ``model``, ``vendor``, ``family``, ``model_number``,
    ``flags`` (a set), ``mhz`` (the clock it reports) and ``cores`` (physical cores: distinct (package, core) pairs).
    Missing fields are ``None`` (another OS, or an architecture that names them otherwise)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    blocks = [dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in block.splitlines()) if _)
              for block in cpuinfo.split("\n\n") if block.strip()]
    first = blocks[0] if blocks else {}
    number = lambda key: int(first[key], 0) if first.get(key, "").strip().isdigit() else None
    cores = {(b.get("physical id"), b.get("core id", b.get("processor"))) for b in blocks}
    return dict(model=first.get("model name") or first.get("Model"), vendor=first.get("vendor_id"),
                family=number("cpu family"), model_number=number("model"),
                flags=set((first.get("flags") or first.get("Features") or "").split()),
                mhz=float(first["cpu MHz"]) if first.get("cpu MHz") else None, cores=len(cores) or None)


def vector_isa(flags: set[str]) -> str | None:
    """The widest floating-point vector instructions in a ``/proc/cpuinfo`` flag set, as a machine line names them:
    ``AVX-512``, ``AVX2, no AVX-512``, ``AVX``, ``SSE4.2``, ``NEON`` (``asimd``) or ``SVE``; ``None`` if none is known."""
    if "avx512f" in flags:
        return "AVX-512" + (", AMX" if "amx_bf16" in flags else "")
    if "avx2" in flags:
        return "AVX2, no AVX-512"
    for flag, name in (("avx", "AVX"), ("sse4_2", "SSE4.2"), ("sve", "SVE"), ("asimd", "NEON")):
        if flag in flags:
            return name
    return None


def amd_core(family: int | None, model: int | None) -> str | None:
    """The Zen generation of an AMD CPU family/model (``cpu family`` 23 = 17h, 25 = 19h, 26 = 1Ah), or ``None``."""
    if family == 23:
        return "Zen 2" if model is not None and model >= 0x30 else "Zen 1/Zen+"
    if family == 25:
        return "Zen 4" if model is not None and (0x10 <= model < 0x20 or 0x60 <= model < 0x80 or 0xA0 <= model < 0xB0) else "Zen 3"
    if family == 26:
        return "Zen 5"
    return None


def flops_per_cycle(flags: set[str], dtype: torch.dtype) -> int:
    """Floating-point operations one core can start per cycle in ``dtype`` matmuls, from its vector width: two FMA
    pipes (Haswell and later, Zen 2 and later, Neoverse) x lanes x 2 (multiply and add). An upper bound where a core
    has fewer or narrower pipes (Zen 1 and Zen 4 split wide vectors in two), so an MFU over it is never too high.
    bf16 doubles it only with bf16 dot-product instructions (AVX512_BF16) and reaches 1024 with AMX tiles;
    elsewhere bf16 runs through float32 arithmetic."""
    if "avx512f" in flags:
        fp32 = 2 * 16 * 2
    elif "avx2" in flags and "fma" in flags:
        fp32 = 2 * 8 * 2
    elif "avx" in flags:
        fp32 = 8 + 8  # one 8-lane multiply and one 8-lane add
    elif "asimd" in flags or "sse2" in flags:
        fp32 = 2 * 4 * 2
    else:
        fp32 = 2
    if dtype == torch.bfloat16:
        if "amx_bf16" in flags:
            return 1024
        if "avx512_bf16" in flags:
            return 2 * fp32
    return fp32


def theoretical_peak_flops(features: dict, dtype: torch.dtype, threads: int) -> float | None:
    """cores x clock x ``flops_per_cycle``: the CPU's peak for ``threads`` threads (at most one per physical core:
    hyper-threads share a core's FMA pipes), at the clock ``/proc/cpuinfo`` (or cpufreq's maximum) reports;
    ``None`` when the clock is not known."""
    mhz = features.get("mhz")
    try:
        mhz = max(mhz or 0, int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1000)
    except (OSError, ValueError):
        pass
    if not mhz:
        return None
    cores = min(threads, features.get("cores") or threads)
    return cores * mhz * 1e6 * flops_per_cycle(features["flags"], dtype)


def machine_info(device: torch.device) -> dict:
    """Processor (or GPU), its vector ISA and core generation, cores, threads and library versions, for the table
    caption and JSON."""
    features = cpu_features()
    cpu = features["model"] or platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    info = dict(cpu=cpu, isa=vector_isa(features["flags"]), cores=os.cpu_count(), threads=torch.get_num_threads(),
                torch=torch.__version__, device=str(device))
    if features["vendor"] == "AuthenticAMD" and amd_core(features["family"], features["model_number"]):
        info["core"] = amd_core(features["family"], features["model_number"])
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def cpu_line(info: dict) -> str:
    """``AMD EPYC (Zen 3, AVX2, no AVX-512)``: the processor with its core generation and vector ISA, when known."""
    detail = ", ".join(part for part in (info.get("core"), info.get("isa")) if part)
    return f"{info['cpu']} ({detail})" if detail else info["cpu"]


def provenance() -> dict:
    """The command that ran (``python -m bench.NAME ...``), the project's commit (``+`` when the work tree differs)
    and the UTC date, for a results JSON."""
    import datetime
    import shlex
    import sys

    module = Path(sys.argv[0]).stem
    command = " ".join(["python -m bench." + module if module not in ("-c", "-m", "") else "python", shlex.join(sys.argv[1:])])
    git = lambda *args: subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=30)
    try:
        commit = git("rev-parse", "--short", "HEAD").stdout.strip() or None
        if commit and git("status", "--porcelain", "--untracked-files=no").stdout.strip():
            commit += "+"
    except (OSError, subprocess.SubprocessError):
        commit = None
    return dict(command=command, commit=commit, date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def describe(info: dict) -> str:
    """One line naming the machine, e.g. for the README."""
    where = info.get("gpu") or f"{cpu_line(info)}, {info['threads']} of {info['cores']} cores"
    return f"{where}; torch {info['torch']}, diffusers {info.get('diffusers', '-')}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- timing
def summarize(samples: Sequence[float]) -> dict:
    """Median and spread (min, max) of a list of timings in seconds."""
    return dict(median=statistics.median(samples), min=min(samples), max=max(samples), n=len(samples), samples=list(samples))


def time_interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 1, clock: str = "wall"
) -> dict[str, dict]:
    """Time each callable ``repeats`` times, taking turns, after ``warmup`` untimed calls of each.

    Turns (A, B, A, B, ...) spread the machine's drift over every contender evenly; the order
    inside a turn alternates too, so no contender always runs right after the same other one.
    ``clock="cpu"`` measures the process's CPU time instead of wall time: on a CPU shared with
    other jobs, with one thread, it leaves out the time the process waited for a core.
    """
    if clock not in ("wall", "cpu") or (clock == "cpu" and device.type != "cpu"):
        raise ValueError(f"clock must be 'wall', or 'cpu' on a CPU device; got {clock!r} on {device}.")
    now = time.perf_counter if clock == "wall" else time.process_time
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            synchronize(device)
            start = now()
            fns[name]()
            synchronize(device)
            times[name].append(now() - start)
    return {name: summarize(t) for name, t in times.items()}


# ---------------------------------------------------------------------------- memory
class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storage created while the mode is active and still alive.

    A device-independent measure of activation memory (the CPU counterpart of
    ``torch.cuda.max_memory_allocated`` minus the memory held before): every storage an operator
    returns is counted once, until it is freed. Memory held inside a library (oneDNN scratch
    buffers, allocator caches) is not seen; ``bench.memory`` checks this measure against the
    process's resident set.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key in self._seen or storage.nbytes() == 0:
                    continue  # a view, or an in-place op returning its input
                self._seen.add(key)
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, key, storage.nbytes())
        return out


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated while ``fn`` runs, above what was allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: ``LiveTensorBytes``.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with LiveTensorBytes() as mode:
        fn()
    return mode.peak


# ---------------------------------------------------------------------------- FLOPs
def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of ``fn`` (matmuls and convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 5,
                      clock: str = "wall") -> float:
    """The best FLOP/s of a large square matmul in ``dtype`` on ``device`` over all its threads.

    Measure it with the clock that times the model (``clock="cpu"``: process CPU time, summed over threads).
    A probe reaches the hardware's peak only when the matmul is large enough to hide its packing and
    threading overhead (2048 on a CPU, 1024 in bf16; 8192 on a GPU); ``peak_flops`` takes the larger of it and the
    theoretical figure.
    """
    if size is None:  # bf16 on a CPU without bf16 instructions: 2048 falls off oneDNN's fast path (0.3 GFLOP/s seen)
        size = 8192 if device.type == "cuda" else 2048 if dtype == torch.float32 else 1024
    now = time.perf_counter if clock == "wall" else time.process_time
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        synchronize(device)
        start = now()
        a @ b
        synchronize(device)
        best = min(best, now() - start)
    return 2 * size**3 / best


def peak_flops(device: torch.device, dtype: torch.dtype, clock: str = "wall", probe: float | None = None) -> dict:
    """The peak an MFU divides by: the larger of the matmul probe (``probe``, else ``matmul_peak_flops``) and, on a
    CPU, ``theoretical_peak_flops`` for the threads torch uses (one core's worth with ``clock="cpu"``: CPU time
    adds the threads up). A probe alone can fall short of the hardware (a busy machine, a matmul too small for
    the ISA), and an MFU over it then passes 100%. Returns ``dict(peak, probe, theoretical)`` in FLOP/s."""
    probe = probe if probe is not None else matmul_peak_flops(device, dtype, clock=clock)
    theoretical = None
    if device.type == "cpu":
        theoretical = theoretical_peak_flops(cpu_features(), dtype, 1 if clock == "cpu" else torch.get_num_threads())
    return dict(peak=max(probe, theoretical or 0.0), probe=probe, theoretical=theoretical)


# ---------------------------------------------------------------------------- output
def format_table(rows: list[dict], columns: Sequence[str]) -> str:
    """A Markdown table of ``rows`` (dicts) with the given columns; missing cells print as ``-``."""
    cells = [[str(row.get(c, "-")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def write_json(name: str, payload: dict, path: Path | None = None) -> Path:
    """Write ``payload`` to ``path`` (default ``bench/results/<name>.json``) and return the path."""
    path = path or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def fmt_spread(summary: dict, scale: float = 1.0, digits: int = 1) -> str:
    """``median (min-max)`` of a timing summary, each multiplied by ``scale``."""
    return f"{summary['median'] * scale:.{digits}f} ({summary['min'] * scale:.{digits}f}-{summary['max'] * scale:.{digits}f})"


def fmt_rate(summary: dict, count: float, digits: int = 1) -> str:
    """``count`` per second of a timing summary, ``median (min-max)``: the fastest call gives the largest rate."""
    rates = dict(median=count / summary["median"], min=count / summary["max"], max=count / summary["min"])
    return fmt_spread(rates, digits=digits)


# ---------------------------------------------------------------------------- pictures
def save_grid(images: torch.Tensor, path: Path, nrow: int, padding: int = 2) -> Path:
    """Images ``(N, C, H, W)`` in [0, 1] as a PNG grid of ``nrow`` per row on white (torchvision's ``save_image``)."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, path, nrow=nrow, padding=padding, pad_value=1.0)
    return path


def pyplot():
    """matplotlib's ``pyplot`` on the file-only Agg backend, or None when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure to ``path`` (its folder made) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
