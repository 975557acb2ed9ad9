"""Evaluation speed: ft-plugin's Trainer (texts longest first) against transformers' own evaluation orders.

    python bench/evaluation.py                # MiniLM-L6 + LoRA, 300 validation tweets, batch 64, 5 repeats

One `Trainer.evaluate()` of one model on the same texts at the same batch size; only the order differs:
ft-plugin's (longest first, so each batch pads to texts of its own length), transformers 5.23's under
`--train_sampling_strategy group_by_length` (random "megabatches": on small sets, random batches), and the dataset's
order (transformers' default, what the PEFT docs' script gets). Variants alternate within each repeat. Reports
samples/s (median), the share of padding tokens, eval_loss (equal up to float rounding) and the ratio to
transformers' group_by_length. Writes bench/results/evaluation.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch.utils.data import SequentialSampler  # noqa: E402
from transformers import Trainer  # noqa: E402

from bench._common import CountingCollator, machine, print_table, run_as_command, write_json  # noqa: E402
from ft_plugin.recipe import build_trainer, parse_args  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default="minilm-l6", help="Default: the embedded MiniLM-L6.")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--max_eval_samples", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=64, help="--per_device_eval_batch_size (the recipe's).")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args(argv)

    trainer = build_trainer(
        *parse_args(
            ["--model_name_or_path", options.model_name_or_path, "--method", options.method,
             "--output_dir", tempfile.mkdtemp(), "--max_train_samples", "64",
             "--max_eval_samples", str(options.max_eval_samples), "--max_seq_length", str(options.max_seq_length),
             "--per_device_eval_batch_size", str(options.batch_size), "--report_to", "none", "--disable_tqdm", "true"]
        )
    )  # fmt: skip
    collator = trainer.data_collator
    orders = {  # each makes the evaluation sampler of a dataset
        "ft-plugin (longest first)": trainer._get_eval_sampler,
        "transformers group_by_length": lambda dataset: Trainer._get_eval_sampler(trainer, dataset),
        "dataset order": SequentialSampler,
    }
    trainer.evaluate()  # warm-up: first-call allocations, metric loading
    measured: dict[str, list[dict]] = {name: [] for name in orders}
    for _ in range(options.repeats):
        for name, sampler in orders.items():
            trainer._get_eval_sampler = sampler
            trainer.data_collator = counter = CountingCollator(collator)
            started = time.perf_counter()
            metrics = trainer.evaluate()
            seconds = time.perf_counter() - started
            padded = sum(size * length for size, length, _ in counter.batches)
            real = sum(tokens for _, _, tokens in counter.batches)
            measured[name].append(
                {"samples_per_s": options.max_eval_samples / seconds, "padding_share": 1 - real / padded,
                 "eval_loss": metrics["eval_loss"]}
            )  # fmt: skip
    rows = [
        {"order": name, **{key: statistics.median(run[key] for run in runs) for key in runs[0]}}
        for name, runs in measured.items()
    ]
    reference = next(row for row in rows if row["order"] == "transformers group_by_length")["samples_per_s"]
    for row in rows:
        row["vs_transformers_group_by_length"] = row["samples_per_s"] / reference
    print(f"Trainer.evaluate on {options.max_eval_samples} texts, batch {options.batch_size}, {options.method}; "
          f"medians of {options.repeats} repeats")  # fmt: skip
    print_table(rows, ["order", "samples_per_s", "padding_share", "eval_loss", "vs_transformers_group_by_length"])
    path = write_json("evaluation", {"machine": machine(), "settings": vars(options), "rows": rows})
    print(f"Wrote {path}")
    return {"rows": rows}


if __name__ == "__main__":
    run_as_command(main)
