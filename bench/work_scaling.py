"""How training cost grows with the work: sequence length, dataset size and batch size (ft-plugin's recipe).

    python bench/work_scaling.py                     # LoRA on the embedded MiniLM-L6 (about 35 minutes on 2 cores)
    python bench/work_scaling.py --method full --lengths 64 128 --repeats 1

1. Samples/s and tokens/s vs `--max_seq_length` (64, 128, 256, 512). Tweets are ~30 tokens, so dynamic padding
   would hide the length: each training text here is 40 embedded tweets joined, truncated to exactly the length.
2. Train time vs dataset size (500 ... 4000 real tweets, one epoch, the recipe's defaults: dynamic padding,
   length-grouped batches), start-up excluded (the Trainer's own `train_runtime`).
3. Training memory vs per-device batch size (8 ... 64) at length 128: the peak resident memory above the memory just
   before `trainer.train()` (gradients, optimizer state, activations).

Every run is a fresh process (clean memory figures, no state shared between runs); runs are sequential. Each of the
`--repeats` rounds runs every setting of the three tables once, so a drift in the machine's speed spreads over all
settings instead of falling on a few; the tables give each figure's median over the rounds (every run is kept in the
JSON) and its ratio to the smallest setting. Writes bench/results/work_scaling.json.
"""

from __future__ import annotations

import argparse
import resource
import statistics
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


def medians(runs: list[dict]) -> dict:
    """Each figure's median over the repeated runs of one setting."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


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
    parser.add_argument("--repeats", type=int, default=3, help="Rounds of every setting; the tables give medians.")
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

    def length_flags(length: int, batch: int) -> list[str]:
        return ["--train_file", long_file, "--max_seq_length", str(length), "--max_steps", str(steps),
                "--per_device_train_batch_size", str(batch)]  # fmt: skip

    settings = {  # table -> (the setting's column and value, recipe flags, untimed warm-up steps) per row
        "by_length": [({"max_seq_length": n}, length_flags(n, options.batch_size), options.warmup)
                      for n in options.lengths],
        "by_size": [({"train_samples": n}, ["--max_train_samples", str(n), "--num_train_epochs", "1"], 0)
                    for n in options.sizes],
        "by_batch": [({"batch_size": n}, length_flags(options.batch_length, n), options.warmup)
                     for n in options.batch_sizes],
    }  # fmt: skip
    runs = {table: [[] for _ in rows] for table, rows in settings.items()}
    for repeat in range(options.repeats):
        for table, rows in settings.items():
            for index, (setting, flags, warmup) in enumerate(rows):
                runs[table][index].append(run(flags, warmup))
                figures = runs[table][index][-1]
                print(f"round {repeat + 1}, {setting}: {figures['samples_per_s']:.2f} samples/s, "
                      f"{figures['train_seconds']:.1f} s, {figures['train_memory_mb']:.0f} MB", flush=True)  # fmt: skip
    by_length, by_size, by_batch = (
        [{**setting, **medians(measured), "runs": measured} for (setting, _, _), measured in zip(rows, runs[table])]
        for table, rows in settings.items()
    )

    print(f"\nMedians of {options.repeats} round(s).")
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
