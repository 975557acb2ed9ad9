"""mimalloc instead of glibc's malloc for training processes on Linux (the default; `FT_PLUGIN_ALLOCATOR=system`
keeps glibc's).

A training step on the CPU allocates and frees its activations, blocks of one to tens of MB, every step. glibc's
malloc serves them from its heap once the first are freed (its mmap threshold rises to their size) and reuses the
holes they leave poorly: the resident memory of a LoRA step on MiniLM-L6 grew to ~1.8x the memory its tensors
needed, which hid most of what LoRA saves over full fine-tuning (bench/README.md). mimalloc (from the PyPI wheel
`cmeel-mimalloc`, a dependency on Linux) reuses them: side by side, LoRA's training memory fell from 750 to 421 MB
and full FT's from 922 to 702 MB, at the same speed. (PyTorch's own CPU launcher, `torch.backends.xeon.run_cpu`,
preloads tcmalloc or jemalloc for the same reason.)

A process can only take another malloc when it starts (`LD_PRELOAD`), so the entry points (the `ft-plugin`
command, the recipes, the benchmarks, the Space) call `use_fast_allocator()` first thing: it re-executes the same
command once with mimalloc preloaded, before torch is imported. Library code (`import ft_plugin`) never does.
An `LD_PRELOAD` that already names an allocator (tcmalloc, jemalloc, mimalloc) is left as it is.
"""

from __future__ import annotations

import os
import re
import sys
from importlib import metadata
from pathlib import Path

ALLOCATOR_VARIABLE = "FT_PLUGIN_ALLOCATOR"
ALLOCATOR_CHOICES = ("mimalloc", "system")  # the first is the default
_ALLOCATOR_LIBRARY = re.compile(r"lib(mimalloc|tcmalloc\w*|jemalloc)[.\w-]*\.so")


def mimalloc_library() -> Path | None:
    """The mimalloc shared library that the `cmeel-mimalloc` wheel installed, or None."""
    try:
        files = metadata.files("cmeel-mimalloc") or []
    except metadata.PackageNotFoundError:
        return None
    libraries = sorted(Path(f.locate()) for f in files if f.name.startswith("libmimalloc.so"))
    return next((library for library in libraries if library.is_file()), None)


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


def use_fast_allocator() -> None:
    """Re-execute this process's command with mimalloc preloaded, unless it runs on one already, the user chose
    `FT_PLUGIN_ALLOCATOR=system`, or the platform or install cannot (not Linux, no `cmeel-mimalloc`).
    Call it first thing in an entry point, before threads start or anything is printed."""
    if chosen_allocator() == "system" or sys.platform != "linux" or not sys.executable:
        return
    preload = os.environ.get("LD_PRELOAD", "")
    if allocator_named(preload):  # ours after the re-execution, or the user's own choice
        return
    library = mimalloc_library()
    if library is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    environment = {**os.environ, "LD_PRELOAD": os.pathsep.join(filter(None, [str(library), preload]))}
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
