"""One training run per output folder: a second run is refused at once and writes nothing; the folder of a
killed run is taken over; what a run writes has the modes the umask gives."""

import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
from trainkit import ROOT, TINY_DIFFUSION, TINY_SEGMENTATION, merged

from train.config import config_from_dict
from train.lock import HOLDER_FILE, LOCK_FILE, RunLock
from train.loop import train
from unet_diffusion.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

LOCK_FILES = {LOCK_FILE, HOLDER_FILE}

# Another process holding the folder, as a run does for its life.
HOLDER = textwrap.dedent("""
    import sys, time
    from train.lock import RunLock
    with RunLock(sys.argv[1]):
        print("holding", flush=True)
        time.sleep(120)
""")


def tiny(tmp_path, base=TINY_DIFFUSION, **sections):
    values = merged(base, **sections)
    values["train"] = {**values["train"], "output_dir": str(tmp_path / "run"), "cpu_threads": 1}
    return config_from_dict(values)


def start_holder(run_dir) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], env=env, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_a_second_run_is_refused_at_once_and_writes_nothing_then_takes_over_a_killed_holder(tmp_path):
    run_dir = tmp_path / "run"
    holder = start_holder(run_dir)
    try:
        with pytest.raises(InputError) as refused:
            train(tiny(tmp_path))
        message = str(refused.value)
        assert len(message.splitlines()) == 1 and f"PID {holder.pid}" in message and str(run_dir) in message
        assert {p.name for p in run_dir.iterdir()} == LOCK_FILES  # no config.yaml, log.jsonl, checkpoints, ...
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: no chance to let go of the lock
        holder.wait()

    lines = []
    result = train(tiny(tmp_path, train={"steps": 2, "checkpoint_every": 0}), log=lines.append)
    assert result.step == 2 and (run_dir / "model.safetensors").is_file()
    assert any(f"PID {holder.pid}" in line for line in lines)  # says whose folder it took over
    assert not (run_dir / HOLDER_FILE).exists()  # a run that ends lets go
    with RunLock(run_dir):  # ... and the folder is free again
        pass


def test_the_lock_is_held_for_the_run_and_let_go_after_a_failure(tmp_path):
    seen = []

    class Probe:
        """A task whose examples check tries to take the lock mid-run, then fails the run."""

        def __getattr__(self, name):
            return getattr(task, name)

        def check_examples(self, examples):
            with pytest.raises(InputError, match=str(os.getpid())):
                with RunLock(tmp_path / "run"):
                    pass
            seen.append("held")
            raise InputError("stop here")

    from train.loop import build_task

    config = tiny(tmp_path, base=TINY_SEGMENTATION)
    task = build_task(config)
    with pytest.raises(InputError, match="stop here"):
        train(config, task=Probe())
    assert seen == ["held"]
    with RunLock(tmp_path / "run"):  # let go although the run failed
        pass


@pytest.fixture(params=[0o022, 0o077], ids=["umask-022", "umask-077"])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def test_a_runs_files_follow_the_umask(umask, tmp_path):
    result = train(tiny(tmp_path, train={"steps": 2, "checkpoint_every": 1}))
    paths = [p for p in result.run_dir.rglob("*")]
    assert any(p.suffix == ".safetensors" for p in paths)  # weights, checkpoints and the pipeline folder among them
    wrong = [(str(p.relative_to(result.run_dir)), oct(stat.S_IMODE(p.stat().st_mode))) for p in paths
             if stat.S_IMODE(p.stat().st_mode) != (0o777 if p.is_dir() else 0o666) & ~umask]
    assert wrong == []
