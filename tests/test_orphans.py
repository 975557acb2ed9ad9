"""Processes that ft-plugin starts end with the process that started them, even when that one is killed."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_a_benchmarks_fresh_process_ends_when_the_benchmark_is_killed(tmp_path):
    parent_script = tmp_path / "bench_parent.py"
    parent_script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            sys.path.insert(0, {str(ROOT)!r})
            from bench._common import run_fresh
            if __name__ == "__main__":
                run_fresh(time.sleep, 300)  # a measurement that outlives the test unless it ends with its parent
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(parent_script)])
    worker = None
    try:
        # the measuring process is a grandchild: the parent starts a forkserver, which forks it
        def measuring() -> list[psutil.Process]:
            return [p for p in psutil.Process(parent.pid).children(recursive=True) if p.ppid() != parent.pid]

        assert wait_for(lambda: measuring(), 120), "the fresh process never started"
        (worker,) = measuring()
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert wait_for(lambda: not _running(worker), 15), "the fresh process outlived the killed benchmark"
    finally:
        if parent.poll() is None:
            parent.kill()
        if worker is not None and _running(worker):
            worker.kill()


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
