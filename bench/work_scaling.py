"""How training cost grows with the work: sequence length, dataset size and batch size (ft-plugin's recipe).

    python bench/work_scaling.py                     # LoRA on the embedded MiniLM-L6 (about 12 minutes on 2 cores)
    python bench/work_scaling.py --method full --lengths 64 128

1. Samples/s and tokens/s vs `--max_seq_length` (64, 128, 256, 512). Tweets are ~30 tokens, so dynamic padding
   would hide the length: each training text here is 40 embedded tweets joined, truncated to exactly the length.
2. Train time vs dataset size (500 ... 4000 real tweets, one epoch, the recipe's defaults: dynamic padding,
   length-grouped batches), start-up excluded (the Trainer's own `train_runtime`).
3. Training memory vs per-device batch size (8 ... 64) at length 128: the peak resident memory above the memory just
   before `trainer.train()` (gradients, optimizer state, activations).

Every run is a fresh process (clean memory figures, no state shared between runs); runs are sequential. Prints the
tables with each figure's ratio to the smallest setting and writes bench/results/work_scaling.json.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import StepClock, current_rss_mb, print_table, run_as_command, run_fresh, write_json  # noqa: E402

TWEETS_PER_TEXT = 40  # ~1200 tokens: every text fills even the longest --max_seq_length


def train_once(argv: list[str], warmup: int) -> dict:
    """Build the recipe's Trainer from `argv`, train, and report speed and memory (in this fresh process)."""
    from ft_plugin.recipe import build_trainer, parse_args

    clock = StepClock()
    trainer = build_trainer(*parse_args(argv), callbacks=[clock])
    lengths = []
    collator = trainer.data_collator

    def counting(features):  # real tokens per batch (no padding: the texts fill the length, or are tweets)
        batch = collator(features)
        lengths.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting
    before = current_rss_mb()
    metrics = trainer.train().metrics
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if warmup:  # steady state: the steps after the first `warmup` ones (every batch full)
        seconds = clock.seconds_after(warmup)
        samples = trainer.args.per_device_train_batch_size * (len(clock.times) - warmup)
        tokens = sum(lengths[warmup : len(clock.times)])
    else:  # the whole run, as the Trainer reports it
        seconds, samples, tokens = metrics["train_runtime"], len(trainer.train_dataset), sum(lengths)
    return {
        "samples_per_s": samples / seconds,
        "tokens_per_s": tokens / seconds,
        "train_seconds": metrics["train_runtime"],
        "train_memory_mb": peak - before,
    }


def long_texts_file(samples: int) -> str:
    """A CSV of `samples` texts, each `TWEETS_PER_TEXT` embedded tweets joined (label: the first tweet's)."""
    from ft_plugin.data import DataArguments, load_data

    data = load_data(DataArguments())
    train = data.splits["train"]
    rows = []
    for i in range(samples):
        start = (i * TWEETS_PER_TEXT) % (len(train) - TWEETS_PER_TEXT)
        rows.append(
            {
                "text": " ".join(train[start : start + TWEETS_PER_TEXT]["text"]),
                "label": data.labels[train[start]["label"]],
            }
        )
    import pandas as pd

    path = Path(tempfile.mkdtemp(prefix="bench-long-texts-")) / "long_texts.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def with_ratios(rows: list[dict], key: str, keys: list[str]) -> list[dict]:
    """Each figure also as a ratio to the first row's, next to the ratio of the setting itself."""
    first = rows[0]
    for row in rows:
        row[f"{key} ratio"] = row[key] / first[key]
        for name in keys:
            row[f"{name} ratio"] = row[name] / first[name]
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="lora")
    parser.add_argument("--model_name_or_path", default=None, help="Default: the embedded MiniLM-L6.")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--batch_size", type=int, default=16, help="Per-device batch of the length runs.")
    parser.add_argument("--batch_length", type=int, default=128, help="Sequence length of the batch-size runs.")
    parser.add_argument("--steps", type=int, default=8, help="Timed steps of the length and batch runs.")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", default="work_scaling")
    options = parser.parse_args(argv)

    common = ["--method", options.method, "--eval_strategy", "no", "--save_strategy", "no",
              "--load_best_model_at_end", "false", "--logging_strategy", "no", "--max_eval_samples", "8",
              "--max_predict_samples", "8"]  # fmt: skip
    if options.model_name_or_path:
        common += ["--model_name_or_path", options.model_name_or_path]
    steps = options.warmup + options.steps
    # twice what the longest run reads: a fifth of the file is carved off for validation and test
    long_file = long_texts_file(2 * max(options.batch_sizes + [options.batch_size]) * steps)

    def run(extra: list[str], warmup: int) -> dict:
        return run_fresh(train_once, [*common, "--output_dir", tempfile.mkdtemp(prefix="bench-work-"), *extra], warmup)

    by_length = []
    for length in options.lengths:
        flags = ["--train_file", long_file, "--max_seq_length", str(length), "--max_steps", str(steps),
                 "--per_device_train_batch_size", str(options.batch_size)]  # fmt: skip
        by_length.append({"max_seq_length": length, **run(flags, options.warmup)})
        print(f"length {length}: {by_length[-1]['samples_per_s']:.2f} samples/s", flush=True)
    by_size = []
    for size in options.sizes:
        flags = ["--max_train_samples", str(size), "--num_train_epochs", "1"]
        by_size.append({"train_samples": size, **run(flags, 0)})
        print(f"size {size}: {by_size[-1]['train_seconds']:.1f} s", flush=True)
    by_batch = []
    for batch in options.batch_sizes:
        flags = ["--train_file", long_file, "--max_seq_length", str(options.batch_length), "--max_steps", str(steps),
                 "--per_device_train_batch_size", str(batch)]  # fmt: skip
        by_batch.append({"batch_size": batch, **run(flags, options.warmup)})
        print(f"batch {batch}: {by_batch[-1]['train_memory_mb']:.0f} MB", flush=True)

    print(f"\n1. Speed vs sequence length ({options.method}, batch {options.batch_size}, texts filling the length)")
    with_ratios(by_length, "max_seq_length", ["samples_per_s", "tokens_per_s"])
    print_table(by_length, ["max_seq_length", "samples_per_s", "tokens_per_s", "max_seq_length ratio",
                            "samples_per_s ratio", "tokens_per_s ratio"])  # fmt: skip
    print("\n2. Train time vs dataset size (one epoch of real tweets)")
    with_ratios(by_size, "train_samples", ["train_seconds"])
    print_table(by_size, ["train_samples", "train_seconds", "samples_per_s", "train_samples ratio",
                          "train_seconds ratio"])  # fmt: skip
    print(f"\n3. Training memory vs batch size (length {options.batch_length})")
    with_ratios(by_batch, "batch_size", ["train_memory_mb"])
    print_table(by_batch, ["batch_size", "train_memory_mb", "samples_per_s", "batch_size ratio",
                           "train_memory_mb ratio"])  # fmt: skip
    payload = {"settings": vars(options), "by_length": by_length, "by_size": by_size, "by_batch": by_batch}
    path = write_json(options.output, {**payload, "rows": by_length + by_size + by_batch})
    print(f"\nWrote {path}")
    return payload


if __name__ == "__main__":
    run_as_command(main)
