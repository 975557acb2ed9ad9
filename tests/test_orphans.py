"""Processes that ft-plugin starts end with the process that started them, even when that one is killed."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

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
        # the measuring process is a grandchild: the parent starts a forkserver, which forks it. The forkserver's
        # imports also run short-lived helpers (ctypes' `ldconfig -p`): only a Python grandchild is the worker, and
        # the one seen is the one kept.
        found: list[psutil.Process] = []

        def one_worker() -> bool:
            found[:] = [
                p for p in psutil.Process(parent.pid).children(recursive=True) if _is_python_grandchild(p, parent.pid)
            ]
            return len(found) == 1

        assert wait_for(one_worker, 120), f"the fresh process never started: {found}"
        (worker,) = found
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert wait_for(lambda: not _running(worker), 15), "the fresh process outlived the killed benchmark"
    finally:
        if parent.poll() is None:
            parent.kill()
        if worker is not None and _running(worker):
            worker.kill()


def _is_python_grandchild(process: psutil.Process, parent_pid: int) -> bool:
    try:
        return process.ppid() != parent_pid and process.exe() == psutil.Process().exe()
    except psutil.Error:  # ended meanwhile: a helper, not the worker
        return False


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_space_stopped_with_sigterm_ends_its_job_and_leaves_no_temporary_folders(tiny_model_dir, tiny_csv, tmp_path):
    """What a Space restart or `docker stop` sends: Python's default for SIGTERM skipped the app's clean-up (the
    job's forkserver left its pymp-* folder in the temporary directory at every stop)."""
    import os
    import socket

    handle_file = pytest.importorskip("gradio_client").handle_file
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    script = (
        f"import importlib.util; spec = importlib.util.spec_from_file_location('app', {str(ROOT / 'space' / 'app.py')!r}); "
        "app = importlib.util.module_from_spec(spec); spec.loader.exec_module(app); "
        f"app.launch([{str(tiny_model_dir)!r}], server_name='127.0.0.1', server_port={port}, quiet=True)"
    )
    env = {**os.environ, "TMPDIR": str(temporary), "FT_PLUGIN_SPACE_RUNS": str(tmp_path / "runs"),
           "GRADIO_ANALYTICS_ENABLED": "False"}  # fmt: skip
    space = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        client = wait_for_client(f"http://127.0.0.1:{port}/", space)
        client.submit(
            handle_file(str(tiny_csv)), "text", "label", str(tiny_model_dir), "lora", 0.01, 200, 4, 32, 5, {},
            api_name="/train",
        )  # fmt: skip
        assert wait_for(lambda: list(temporary.glob("pymp-*")) and psutil.Process(space.pid).children(), 120)
        children = psutil.Process(space.pid).children(recursive=True)
        space.send_signal(signal.SIGTERM)
        assert space.wait(60) == 0
        assert wait_for(lambda: not any(_running(child) for child in children), 15), "a job outlived the Space"
        assert not list(temporary.glob("pymp-*"))
    finally:
        if space.poll() is None:
            space.kill()


def wait_for_client(url: str, process: subprocess.Popen):
    from gradio_client import Client

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            return Client(url, verbose=False, ssl_verify=False)
        except Exception:  # not serving yet
            time.sleep(0.5)
    raise AssertionError(f"the Space never served {url}")
