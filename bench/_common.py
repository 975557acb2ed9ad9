"""Shared pieces of the benchmarks: timing, token counting, FLOP estimates, GEMM peak, table and JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from ft_plugin.allocator import allocator_in_use, use_fast_allocator
from ft_plugin.errors import FtPluginError


def results_dir() -> Path:
    """Where tables go: bench/results/, or $FT_PLUGIN_BENCH_RESULTS (tests: smoke runs never overwrite the figures)."""
    return Path(os.environ.get("FT_PLUGIN_BENCH_RESULTS", Path(__file__).parent / "results"))


def run_as_command(main: Callable[[], None]) -> None:
    """A benchmark's `__main__`: on the allocator that ft-plugin's commands run on (mimalloc by default; the
    process re-runs itself once, ft_plugin/allocator.py), so that times and memory are what users get. A problem the
    user can fix (a folder that is not a result, a bad flag) ends it with ft-plugin's one-line error, status 2."""
    use_fast_allocator()
    try:
        main()
    except FtPluginError as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def run_fresh(function: Callable, *args):
    """`function(*args)` in a new process of its own, so that its peak memory is its own. The process forks from a
    server that imported the recipe once (`ft_plugin.jobs.preloaded_context`), not a cold interpreter each time.
    The process ends with this one, even when this one is killed mid-measurement."""
    from ft_plugin.jobs import exit_with_parent, preloaded_context

    context = preloaded_context()
    with ProcessPoolExecutor(1, context, initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
        return pool.submit(function, *args).result()


def recipe_flags(args, *names: str) -> list[str]:
    """`--name value` for each of `names` that `args` sets (not None): a benchmark's own flags, passed to the recipe
    under the recipe's names."""
    return [
        item for name in names if getattr(args, name) is not None for item in (f"--{name}", str(getattr(args, name)))
    ]


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def accelerator() -> torch.device:
    """Where the Trainer trains on this machine: the first CUDA GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a timestamp means it is done (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock(TrainerCallback):
    """Timestamps of optimizer steps, so steady-state time excludes start-up and the first (warm-up) steps. On a GPU
    each timestamp waits for the step's kernels."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.device = accelerator()

    def tick(self) -> None:
        synchronize(self.device)
        self.times.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.tick()

    def seconds_after(self, warmup: int) -> float:
        return self.times[-1] - self.times[warmup - 1]


class CountingCollator:
    """Wraps a data collator and records each batch's padded shape and real (unpadded) token count."""

    def __init__(self, collator) -> None:
        self.collator = collator
        self.batches: list[tuple[int, int, int]] = []  # (batch size, padded length, real tokens)

    def __call__(self, features):
        batch = self.collator(features)
        record(self.batches, batch)
        return batch


def record(batches: list, batch) -> None:
    size, length = batch["input_ids"].shape
    batches.append((size, length, int(batch["attention_mask"].sum())))


def per_token_linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers that every token passes through, by name: embeddings, the pooler and the head (one vector
    per sequence) excluded."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not any(part in name for part in ("classifier", "pooler"))
    }


def encoder_matmul_parameters(model: nn.Module) -> int:
    """Weights of `per_token_linear_layers`."""
    return sum(layer.weight.numel() for layer in per_token_linear_layers(model).values())


def training_flops(
    batches, matmul_params: int, layers: int, hidden: int, full: bool, input_only_params: int = 0
) -> float:
    """Model FLOPs of training steps, per sequence of padded length T: forward 2 P T in the linear layers and
    4 L T^2 H in attention's two matmuls. Backward is 2x forward in the linear layers with weight gradients (full
    fine-tuning) and 1x without (frozen weights: input gradients only), less the linear layers whose input needs no
    gradient (`input_only_params`, e.g. the first block's query/key/value reading frozen embeddings: their backward
    is skipped); attention's matmuls have no weights, so their backward is 2x forward either way (the gradients of
    both operands)."""
    tokens = sum(size * length for size, length, _ in batches)
    attention = sum(size * 4 * layers * length**2 * hidden for size, length, _ in batches)
    if full:
        return 3 * 2 * matmul_params * tokens + 3 * attention
    return 2 * (2 * matmul_params - input_only_params) * tokens + 3 * attention


def frozen_input_parameters(model: nn.Module) -> int:
    """Weights of the per-token linear layers (`per_token_linear_layers`) whose input needs no gradient when the
    embeddings are frozen and every linear layer trains an adapter (LoRA's case): those reading the embedding output
    alone, such as BERT's first query, key and value. Found by running the model once: each linear layer's output is
    marked as needing a gradient, as an adapter's would be, and each input checked."""
    seen: dict[str, bool] = {}

    def check_input(name: str, args: tuple) -> None:
        seen.setdefault(name, args[0].requires_grad)

    def as_if_adapted(output: torch.Tensor) -> torch.Tensor:
        return output if output.requires_grad else output.requires_grad_()

    layers = per_token_linear_layers(model)
    hooks = []
    for name, layer in layers.items():
        hooks.append(layer.register_forward_pre_hook(lambda _, args, name=name: check_input(name, args)))
        hooks.append(layer.register_forward_hook(lambda _, args, output: as_if_adapted(output)))
    requires_grad_before = {parameter: parameter.requires_grad for parameter in model.parameters()}
    try:
        for parameter in requires_grad_before:
            parameter.requires_grad_(False)
        model(input_ids=torch.ones(1, 4, dtype=torch.long))
    finally:
        for hook in hooks:
            hook.remove()
        for parameter, requires_grad in requires_grad_before.items():
            parameter.requires_grad_(requires_grad)
    return sum(layers[name].weight.numel() for name, needs_gradient in seen.items() if not needs_gradient)


def gemm_peak_flops(hidden: int, repeats: int = 20, device: torch.device | None = None) -> float:
    """fp32 GEMM FLOP/s on the device the training runs on (default: `accelerator()`) for the model's shapes
    (tokens x hidden x 4 hidden), best of shapes."""
    device = device or accelerator()
    best = 0.0
    for m, k, n in [(4096, hidden, 4 * hidden), (4096, 4 * hidden, hidden), (4096, hidden, hidden)]:
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        for _ in range(3):
            a @ b
        runs = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            a @ b
            synchronize(device)
            runs.append(time.perf_counter() - start)
        best = max(best, 2 * m * k * n / statistics.median(runs))
    return best


def machine() -> dict:
    return {
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "allocator": allocator_in_use(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def print_table(rows: list[dict], columns: list[str]) -> None:
    cells = [[f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))


def write_json(name: str, payload: dict) -> Path:
    results = results_dir()
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path
