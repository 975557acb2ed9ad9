"""Entry points re-run their process on mimalloc (ft_plugin/allocator.py): when, with what, and how to opt out.

conftest.py sets FT_PLUGIN_ALLOCATOR=system for pytest's own process; these tests start processes as a user does.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ft_plugin.allocator import allocator_named, mimalloc_available, mimalloc_library

ROOT = Path(__file__).resolve().parents[1]
REPORT = (
    "import json, os, sys\n"
    "from ft_plugin.allocator import allocator_in_use, use_fast_allocator\n"
    "use_fast_allocator()\n"
    "print(json.dumps({'allocator': allocator_in_use(), 'preload': os.environ.get('LD_PRELOAD', ''),"
    " 'argv': sys.argv[1:], 'torch': 'torch' in sys.modules, 'rerun': os.environ.get('FT_PLUGIN_ALLOCATOR_RERUN'),"
    " 'purge': os.environ.get('MIMALLOC_PURGE_DELAY')}))\n"
)
needs_mimalloc = pytest.mark.skipif(
    not mimalloc_available(), reason="mimalloc is preloaded on Linux, from cmeel-mimalloc"
)


def report(environment: dict[str, str], *args: str, command: list[str] | None = None, stdin: str | None = None):
    """REPORT run as `python -c` (or `command`) in a process started as a user starts one, with `environment`."""
    env = {key: value for key, value in os.environ.items() if key not in ("LD_PRELOAD", "FT_PLUGIN_ALLOCATOR")}
    return subprocess.run(
        command or [sys.executable, "-c", REPORT, *args],
        env={**env, **environment}, input=stdin, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    "preload, named",
    [
        ("/site-packages/cmeel.prefix/lib/libmimalloc.so.3", "mimalloc"),
        ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /opt/libfoo.so", "tcmalloc_minimal"),
        ("libjemalloc.so.2", "jemalloc"),
        ("/usr/lib/libm.so.6", None),
        ("", None),
    ],
)
def test_preloaded_allocators_are_recognised_by_their_library_name(preload, named):
    assert allocator_named(preload) == named


@needs_mimalloc
def test_a_command_reruns_itself_on_mimalloc_keeping_its_arguments_and_other_preloads():
    other = ctypes.util.find_library("m")  # a library a user may preload for another reason
    result = report({"LD_PRELOAD": other}, "--flag", "a value")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["allocator"] == "mimalloc"  # mapped into the re-run process: malloc is mimalloc's
    assert seen["preload"].split(os.pathsep) == [str(mimalloc_library()), other]
    assert seen["argv"] == ["--flag", "a value"]
    assert not seen["torch"]  # chosen before torch is imported
    assert seen["rerun"] is None  # the re-run's marker is not passed on to its children
    assert seen["purge"] == "-1"  # freed memory is kept for the next step
    assert json.loads(report({"MIMALLOC_PURGE_DELAY": "500"}).stdout)["purge"] == "500"  # a user's setting is kept


@needs_mimalloc
def test_system_keeps_glibc_and_a_users_own_allocator_is_left_alone():
    assert json.loads(report({"FT_PLUGIN_ALLOCATOR": "system"}).stdout) == {
        "allocator": "system", "preload": "", "argv": [], "torch": False, "rerun": None, "purge": None,
    }  # fmt: skip
    users_choice = str(mimalloc_library())  # any allocator already in LD_PRELOAD: not re-run, not prepended twice
    seen = json.loads(report({"LD_PRELOAD": users_choice}).stdout)
    assert seen["preload"] == users_choice and seen["allocator"] == "mimalloc"


@needs_mimalloc
def test_the_rerun_never_reruns_again_even_if_the_loader_dropped_the_preload():
    seen = json.loads(report({"FT_PLUGIN_ALLOCATOR_RERUN": "1"}).stdout)  # e.g. a setcap interpreter drops LD_PRELOAD
    assert (seen["allocator"], seen["preload"], seen["rerun"]) == ("system", "", None)


@needs_mimalloc
def test_a_program_that_its_command_line_would_not_bring_back_is_not_rerun(tmp_path):
    script = tmp_path / "report.py"
    script.write_text(REPORT)
    driver = tmp_path / "driver.py"  # runs an entry point with runpy under its own argv, as tests and tools do
    driver.write_text(
        f"import runpy, sys\nsys.argv = ['{script}', '--x']\nrunpy.run_path('{script}', run_name='__main__')\n"
    )
    for command, stdin in (([sys.executable, str(driver)], None), ([sys.executable, "-"], REPORT)):
        result = report({"FT_PLUGIN_ALLOCATOR": "mimalloc"}, command=command, stdin=stdin)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["allocator"] == "system"  # it ran once, on glibc's malloc
        assert result.stderr.strip() == (
            "ft-plugin: warning: FT_PLUGIN_ALLOCATOR=mimalloc, but this process was not started as a command (a "
            "notebook, stdin or a runpy driver): glibc's malloc."
        )
    assert json.loads(report({}, command=[sys.executable, str(script)]).stdout)["allocator"] == "mimalloc"


def test_an_unknown_allocator_is_one_line_before_anything_starts():
    result = report({"FT_PLUGIN_ALLOCATOR": "tcmallc"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (
        "ft-plugin: error: FT_PLUGIN_ALLOCATOR=tcmallc is not an allocator: set it to mimalloc or system, or unset it "
        "(default mimalloc)."
    )


@needs_mimalloc
def test_ft_plugin_train_runs_on_mimalloc_by_default(tiny_model_dir, tiny_csv, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "ft_plugin.cli", "train", "--model_name_or_path", str(tiny_model_dir),
        "--train_file", str(tiny_csv), "--output_dir", str(out), "--max_steps", "2", "--eval_strategy", "no",
        "--save_strategy", "no", "--load_best_model_at_end", "false", "--report_to", "none",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "FT_PLUGIN_ALLOCATOR"}
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Memory allocator: mimalloc" in result.stderr
    assert (out / "adapter_model.safetensors").is_file()
