"""mimalloc instead of glibc's malloc for training processes on Linux (the default; `FT_PLUGIN_ALLOCATOR=system`
keeps glibc's).

A training step on the CPU allocates and frees its activations, blocks of one to tens of MB, every step. glibc's
malloc serves them from its heap once the first are freed (its mmap threshold rises to their size), reuses the holes
they leave poorly and keeps them resident, which hid most of what LoRA saves over full fine-tuning. mimalloc (from
the PyPI wheel `cmeel-mimalloc`, a dependency on Linux) reuses them: in `bench/methods.py` (500 tweets), LoRA's
training memory fell from 749 to 433 MB and full FT's from 908 to 706 MB (LoRA / full 0.83x -> 0.61x), as fast or
faster (bench/README.md). PyTorch's own CPU launcher, `torch.backends.xeon.run_cpu`, preloads tcmalloc or
jemalloc for the same reason.

A process can only take another malloc when it starts (`LD_PRELOAD`), so the entry points call
`use_fast_allocator()` first: the `ft-plugin` command, the recipes and `python space/app.py` before torch is
imported, the benchmarks after their imports. It re-executes the same command once with mimalloc preloaded; child
processes inherit it. Library code (`import ft_plugin`) never does, nor does a process that running its command
line again would not bring back (a notebook, stdin, a runpy driver). An `LD_PRELOAD` that already names an
allocator (tcmalloc, jemalloc, mimalloc) is left as it is.
"""

from __future__ import annotations

import os
import re
import sys
from importlib import metadata
from pathlib import Path

ALLOCATOR_VARIABLE = "FT_PLUGIN_ALLOCATOR"
ALLOCATOR_CHOICES = ("mimalloc", "system")  # the first is the default
_RERUN_VARIABLE = "FT_PLUGIN_ALLOCATOR_RERUN"  # set for the re-executed process only: never twice
# Freed memory stays with mimalloc for the next step instead of going back to the system after 1 s (its default),
# as PyTorch's CPU launcher turns jemalloc's decay off: a step re-faults no pages (bench/README.md).
MIMALLOC_KEEP_FREED = ("MIMALLOC_PURGE_DELAY", "-1")
_ALLOCATOR_LIBRARY = re.compile(r"lib(mimalloc|tcmalloc\w*|jemalloc)[.\w-]*\.so")


def mimalloc_library() -> Path | None:
    """The mimalloc shared library that the `cmeel-mimalloc` wheel installed, or None (also off Linux, where it is
    not preloaded, and without an interpreter path to re-run)."""
    if sys.platform != "linux" or not sys.executable:
        return None
    try:
        files = metadata.files("cmeel-mimalloc") or []
    except metadata.PackageNotFoundError:
        return None
    libraries = sorted(Path(f.locate()) for f in files if f.name.startswith("libmimalloc.so"))
    return next((library for library in libraries if library.is_file()), None)


def mimalloc_available() -> bool:
    """Whether `use_fast_allocator()` can preload mimalloc here: Linux, with the `cmeel-mimalloc` wheel installed."""
    return mimalloc_library() is not None


def allocator_named(preload: str) -> str | None:
    """The allocator (`mimalloc`, `tcmalloc...`, `jemalloc`) that an `LD_PRELOAD` value names, or None."""
    match = _ALLOCATOR_LIBRARY.search(preload)
    return match.group(1) if match else None


def allocator_in_use() -> str:
    """The malloc this process runs on: a preloaded allocator found in its memory map, else glibc's."""
    try:
        mapped = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        return "system"
    return allocator_named(mapped) or "system"


def chosen_allocator() -> str:
    """`FT_PLUGIN_ALLOCATOR`, checked: one of `ALLOCATOR_CHOICES` (default mimalloc)."""
    choice = os.environ.get(ALLOCATOR_VARIABLE, ALLOCATOR_CHOICES[0]).strip().lower() or ALLOCATOR_CHOICES[0]
    if choice not in ALLOCATOR_CHOICES:  # one line and the status of user errors, before anything has started
        print(
            f"ft-plugin: error: {ALLOCATOR_VARIABLE}={choice} is not an allocator: "
            f"set it to {' or '.join(ALLOCATOR_CHOICES)}, or unset it (default {ALLOCATOR_CHOICES[0]}).",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return choice


def started_as_this_program() -> bool:
    """Whether running this process's command line again comes back to this program with the same arguments: a
    script, a `-m` module or a `-c` program, not `python -` (stdin is used up), an interactive or IPython session,
    or a driver that changed `sys.argv` to run an entry point with runpy."""
    if sys.flags.interactive or hasattr(sys, "ps1") or "IPython" in sys.modules:
        return False
    original, argv = sys.orig_argv, sys.argv
    start = len(original) - len(argv)  # where this program's own name stands in the command line
    if start < 1 or not argv or original[start + 1 :] != argv[1:]:
        return False
    program, before = original[start], original[start - 1]
    return (program == argv[0] != "-") or (before == "-c" == argv[0]) or before == "-m"


def use_fast_allocator() -> None:
    """Re-execute this process's command with mimalloc preloaded, unless it runs on an allocator already, the user
    chose `FT_PLUGIN_ALLOCATOR=system`, or it cannot (not Linux, no `cmeel-mimalloc`, a command that would not come
    back here). Call it first thing in an entry point: code before it runs twice."""
    rerun = os.environ.pop(_RERUN_VARIABLE, None) is not None  # the re-run, whatever the loader made of LD_PRELOAD
    if rerun or chosen_allocator() == "system":
        return
    preload = os.environ.get("LD_PRELOAD", "")
    if allocator_named(preload):  # the user's own choice
        return
    library = mimalloc_library()
    if library is None or not started_as_this_program():
        if ALLOCATOR_VARIABLE in os.environ:  # asked for by name: say why not
            reason = (
                "it is not installed (pip install cmeel-mimalloc; Linux only)"
                if library is None
                else ("this process was not started as a command (a notebook, stdin or a runpy driver)")
            )
            print(f"ft-plugin: warning: {ALLOCATOR_VARIABLE}=mimalloc, but {reason}: glibc's malloc.", file=sys.stderr)
        return
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    environment = {
        MIMALLOC_KEEP_FREED[0]: MIMALLOC_KEEP_FREED[1],  # unless the user set it (below)
        **os.environ,
        "LD_PRELOAD": os.pathsep.join(filter(None, [str(library), preload])),
        _RERUN_VARIABLE: "1",
    }
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
