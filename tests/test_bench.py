"""The benchmark helpers measure what they say (no timings asserted)."""

import torch

from bench.common import LiveTensorBytes, format_table, peak_memory, summarize, time_interleaved


def test_live_tensor_bytes_counts_peak_not_total():
    def work():
        a = torch.ones(1024, 256)  # 1 MiB
        b = a * 2  # 1 MiB more: 2 MiB live
        del a, b
        c = torch.ones(1024, 128)  # 0.5 MiB after both are freed
        return c.sum()

    with LiveTensorBytes() as mode:
        work()
    assert 2 * 2**20 <= mode.peak < 2.1 * 2**20
    assert peak_memory(work, torch.device("cpu")) == mode.peak


def test_interleaved_timing_and_table():
    calls = []
    res = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, torch.device("cpu"), repeats=3)
    assert calls[2:] == ["a", "b", "b", "a", "a", "b"]  # after one warm-up call each, turns alternate
    assert set(res) == {"a", "b"} and res["a"]["n"] == 3
    assert summarize([3.0, 1.0, 2.0])["median"] == 2.0
    table = format_table([{"x": 1, "y": "z"}, {"x": 22}], ["x", "y"])
    assert table.splitlines()[3] == "| 22 | - |"
