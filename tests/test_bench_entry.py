"""Every benchmark runs as ``python -m bench.NAME`` through the one entry (``bench.common.run_bench``)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import run_bench

BENCH = Path(__file__).resolve().parents[1] / "bench"
# bench.report renders the docs from the results; it measures nothing, so it is not a benchmark entry.
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py") if 'if __name__ == "__main__":' in p.read_text() and p.stem != "report")
SHARED = ("--quick", "--device", "--threads", "--clock", "--out")


def test_every_bench_script_is_found_and_no_bench_file_touches_sys_path():
    assert {"speed", "memory", "sampling", "init_effect", "quality_gen", "quality_seg"} <= set(SCRIPTS)
    for path in BENCH.glob("*.py"):
        assert "sys.path" not in path.read_text(), f"{path.name} edits sys.path; run it as python -m bench.{path.stem}"


def test_every_bench_module_answers_help_with_the_shared_options():
    # Started together: each imports torch and the packages, which takes seconds.
    runs = {name: subprocess.Popen([sys.executable, "-m", f"bench.{name}", "--help"], cwd=BENCH.parent,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in SCRIPTS}
    for name, run in runs.items():
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, f"python -m bench.{name} --help failed:\n{err[-2000:]}"
        assert all(flag in out for flag in SHARED), (name, out)
        if name.startswith("quality_"):
            own = ("--minutes", "--methods", "--config", "--set", "--seed", "--pipelines")
            assert all(flag in out for flag in own), (name, out)


def test_the_entry_applies_the_shared_options_and_reports_in_one_format(tmp_path, capsys):
    measured = []

    def options(parser):
        parser.add_argument("--extra", type=int, default=1)

    def measure(bench):
        measured.append(bench)
        bench.report(dict(value=bench.args.extra), [{"a": 1, "b": "x"}], ["a", "b"], "caption")

    out = tmp_path / "demo.json"
    assert run_bench("demo", "A demo.\n\nMore.", options, measure, ["--device", "cpu", "--quick", "--out", str(out)]) == 0
    (bench,) = measured
    assert bench.device.type == "cpu" and bench.args.extra == 1
    assert bench.results_name() == "demo_quick" and bench.results_name("pipelines") == "demo_pipelines_quick"
    payload = json.loads(out.read_text())
    assert list(payload) == ["machine", "value"] and payload["value"] == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == ["caption", f"JSON: {out}"] and printed[-1] == "| 1 | x |"   # the table last


@pytest.mark.parametrize("argv, message", [
    (["--clock", "cpu"], "wall time only"),               # a benchmark that budgets wall time
    (["--threads", "0"], "must be positive"),
    (["--device", "nonsense"], "nonsense"),
])
def test_the_entry_refuses_bad_shared_options_before_measuring(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        run_bench("demo", "A demo.", lambda parser: None, lambda bench: pytest.fail("measured"), argv, timed=False)
    assert stop.value.code == 2 and message in capsys.readouterr().err
