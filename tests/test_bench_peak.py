"""The machine line and the peak an MFU divides by, from /proc/cpuinfo text (no timings)."""

import torch

from bench.common import cpu_features, cpu_line, describe, flops_per_cycle, peak_flops, theoretical_peak_flops, vector_isa

PROCESSOR = """processor\t: {core}
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9454 48-Core Processor
cpu MHz\t\t: 2750.000
physical id\t: 0
core id\t\t: {core}
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512bw avx512_bf16
"""
ZEN4 = "\n".join(PROCESSOR.format(core=core) for core in range(2))  # /proc/cpuinfo of a 2-core Zen 4 EPYC


def test_cpuinfo_names_the_cpu_its_isa_and_its_physical_cores():
    f = cpu_features(ZEN4)
    assert (f["model"], f["vendor"], f["family"], f["model_number"], f["mhz"], f["cores"]) == (
        "AMD EPYC 9454 48-Core Processor", "AuthenticAMD", 25, 17, 2750.0, 2)
    assert vector_isa(f["flags"]) == "AVX-512"
    hyperthreads = ZEN4.replace("core id\t\t: 1", "core id\t\t: 0")  # two logical CPUs on one core
    assert cpu_features(hyperthreads)["cores"] == 1


def test_isa_from_flags():
    assert vector_isa({"sse2", "avx", "fma", "avx2"}) == "AVX2, no AVX-512"
    assert vector_isa({"avx2", "avx512f", "amx_bf16"}) == "AVX-512, AMX"
    assert vector_isa({"fp", "asimd"}) == "NEON"
    assert vector_isa(set()) is None


def test_machine_line_names_core_and_isa():
    info = dict(cpu="AMD EPYC", core="Zen 3", isa="AVX2, no AVX-512", threads=2, cores=2, torch="2", diffusers="0")
    assert cpu_line(info) == "AMD EPYC (Zen 3, AVX2, no AVX-512)"
    assert describe(info).startswith("AMD EPYC (Zen 3, AVX2, no AVX-512), 2 of 2 cores")
    assert cpu_line(dict(cpu="Some CPU")) == "Some CPU"


def test_theoretical_peak_is_cores_clock_and_vector_width():
    f = cpu_features(ZEN4)
    assert flops_per_cycle(f["flags"], torch.float32) == 64  # 2 FMA pipes x 16 lanes x 2
    assert flops_per_cycle({"avx2", "fma"}, torch.float32) == 32
    assert flops_per_cycle({"avx2", "fma"}, torch.bfloat16) == 32  # no bf16 instructions: float32 arithmetic
    assert flops_per_cycle(f["flags"], torch.bfloat16) == 128
    f["mhz"] = 1e9  # above any cpufreq maximum, so the figure is this clock's
    assert theoretical_peak_flops(f, torch.float32, threads=8) == 2 * 1e15 * 64  # 2 cores: threads beyond them add nothing
    assert theoretical_peak_flops(f, torch.float32, threads=1) == 1e15 * 64


def test_peak_is_the_larger_of_probe_and_theory():
    cpu = torch.device("cpu")
    low = peak_flops(cpu, torch.float32, probe=1.0)  # a probe far below any real CPU
    if low["theoretical"] is not None:  # a machine whose clock /proc/cpuinfo gives
        assert low["peak"] == low["theoretical"] > 1.0
    high = peak_flops(cpu, torch.float32, probe=1e30)  # a probe above any theory
    assert high["peak"] == 1e30
