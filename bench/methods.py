"""The methods leaderboard: every registered method on the embedded default at its documented defaults.

    python bench/methods.py                                  # all methods, 2 seeds (long: ~1 h on 2 cores)
    python bench/methods.py --methods lora full --seeds 1 --max_train_samples 500
    python bench/methods.py --methods full lora --variant "full lr 2e-4=full --learning_rate 2e-4"

Fixed split (the embedded default's), fixed budget (same samples, epochs, batch size for every method), each
method at its default hyper-parameters and learning rate. Each run is a fresh process (for a clean peak RSS).
Reports test accuracy, macro-F1, trainable parameters, train time, peak memory and result size on disk, with full
fine-tuning as the reference row. Memory: peak RSS of the whole process (Python, torch, data and model included)
and the training memory, the peak above the RSS just before `trainer.train()` (gradients, optimizer state,
activations; on GPU also CUDA max allocated). Writes bench/results/methods.json and methods.png (accuracy vs
trainable params). `--variant NAME=METHOD FLAGS` adds a row for a method with other flags (a tuned reference
beside the defaults), run in the same way.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import current_rss_mb, print_table, results_dir, run_as_command, run_fresh, write_json  # noqa: E402
from ft_plugin.methods import METHODS  # noqa: E402

WEIGHT_FILES = ("adapter_model.safetensors", "delta_model.safetensors", "model.safetensors")


def train_once(method: str, seed: int, options: dict, extra_flags: str = "") -> dict:
    """One training run in this (fresh) process; returns its metrics and peak memory. `extra_flags` (a variant's)
    come last, so they win over the budget's."""
    import torch

    from ft_plugin.recipe import build_trainer, parse_args, train_and_save

    output_dir = tempfile.mkdtemp(prefix=f"bench-{method}-")
    argv = ["--method", method, "--output_dir", output_dir, "--seed", str(seed), "--save_strategy", "no",
            "--eval_strategy", "no", "--load_best_model_at_end", "false", "--logging_strategy", "no",
            *(f"--{key}={value}" for key, value in options.items() if value is not None and key != "flags"),
            *shlex.split(options.get("flags") or ""), *shlex.split(extra_flags)]  # fmt: skip
    trainer = build_trainer(*parse_args(argv))
    before_training_mb = current_rss_mb()  # the process with data, base model and delta weights loaded
    metrics = train_and_save(trainer)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cuda_peak_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    size = sum((Path(output_dir) / name).stat().st_size for name in WEIGHT_FILES if (Path(output_dir) / name).exists())
    return {
        "test_accuracy": metrics["test_accuracy"],
        "test_f1_macro": metrics["test_f1_macro"],
        "trainable_params": metrics["trainable_params"],
        "total_params": metrics["total_params"],
        "train_seconds": metrics["train_runtime"],
        "peak_rss_mb": peak_rss_mb,
        "train_memory_mb": peak_rss_mb - before_training_mb,
        "cuda_peak_mb": cuda_peak_mb,
        "result_mb": size / 2**20,
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        axis.scatter(row["trainable_params"], 100 * row["test_accuracy"], s=30)
        axis.annotate(row["method"], (row["trainable_params"], 100 * row["test_accuracy"]), fontsize=8,
                      xytext=(4, 3), textcoords="offset points")  # fmt: skip
    axis.set_xscale("log")
    axis.set_xlabel("trainable parameters (log scale)")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title("Accuracy vs trainable parameters (embedded default, same budget)")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def parse_variant(spec: str) -> tuple[str, str, str]:
    """`NAME=METHOD FLAGS` -> (row name, method, flags)."""
    name, _, command = spec.partition("=")
    method, _, flags = command.strip().partition(" ")
    if not name.strip() or not method:
        raise SystemExit(
            f'methods.py: error: --variant {spec!r}: write NAME=METHOD FLAGS, e.g. "tuned=full --learning_rate 2e-4".'
        )
    return name.strip(), method, flags


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--model_name_or_path", default=None)
    parser.add_argument("--max_train_samples", type=int, default=2000)
    parser.add_argument("--max_predict_samples", type=int, default=1000)
    parser.add_argument("--num_train_epochs", type=float, default=2)
    parser.add_argument("--per_device_train_batch_size", type=int, default=32)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--output", default="methods")
    parser.add_argument("--flags", default="", help='More recipe flags for every run, e.g. "--lora_r 16".')
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME=METHOD FLAGS",
        help='Also a row for METHOD with more recipe flags, e.g. --variant "full lr 2e-4=full --learning_rate 2e-4".',
    )  # fmt: skip
    options = parser.parse_args(argv)
    entries = [(method, method, "") for method in options.methods] + [parse_variant(spec) for spec in options.variant]
    budget = {k: getattr(options, k) for k in ("model_name_or_path", "max_train_samples", "max_predict_samples",
                                               "num_train_epochs", "per_device_train_batch_size", "max_seq_length",
                                               "flags")}  # fmt: skip
    budget["max_eval_samples"] = 8  # no evaluation during training; the validation split is not used

    rows = []
    for name, method, extra_flags in entries:
        runs = [run_fresh(train_once, method, seed, budget, extra_flags) for seed in range(42, 42 + options.seeds)]
        row = {"method": name, "family": METHODS[method].family if method in METHODS else "combination"}
        for key in runs[0]:
            values = [run[key] for run in runs if run[key] is not None]
            row[key] = statistics.median(values) if values else None
        row["accuracy_per_seed"] = [run["test_accuracy"] for run in runs]
        row["trainable_%"] = 100 * row["trainable_params"] / row["total_params"]
        rows.append(row)
        print(f"{name}: accuracy {row['accuracy_per_seed']}, {row['train_seconds']:.0f} s", flush=True)
        write_json(options.output, {"settings": vars(options), "rows": rows, "complete": False})  # survive interruption
    reference = next((row for row in rows if row["method"] == "full"), None)
    for row in rows:
        if reference:
            row["accuracy_vs_full_points"] = 100 * (row["test_accuracy"] - reference["test_accuracy"])
            row["memory_vs_full"] = row["peak_rss_mb"] / reference["peak_rss_mb"]
            row["train_memory_vs_full"] = row["train_memory_mb"] / reference["train_memory_mb"]
    print(f"\nMedians over {options.seeds} seed(s); budget: {json.dumps(budget)}")
    columns = [
        "method",
        "family",
        "test_accuracy",
        "test_f1_macro",
        "trainable_params",
        "trainable_%",
        "train_seconds",
        "peak_rss_mb",
        "train_memory_mb",
        "result_mb",
    ]
    if any(row.get("cuda_peak_mb") for row in rows):  # on a GPU: torch.cuda.max_memory_allocated, beside RSS
        columns.insert(columns.index("train_memory_mb") + 1, "cuda_peak_mb")
    if reference:
        columns += ["accuracy_vs_full_points", "memory_vs_full", "train_memory_vs_full"]
    print_table(rows, columns)
    write_json(options.output, {"settings": vars(options), "rows": rows, "complete": True})
    plot(rows, results_dir() / f"{options.output}.png")
    print(f"\nWrote {results_dir() / options.output}.json and .png")
    return rows


if __name__ == "__main__":
    run_as_command(main)
