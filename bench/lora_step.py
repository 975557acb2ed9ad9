"""One LoRA training step (forward + backward), `--fused_lora true` (the default) against PEFT's own forward.

    python bench/lora_step.py                 # MiniLM-L6, the recipe's batch of 32 tweets at max length 128

Both models come from the recipe (`build_trainer`, same seed and weights; `--fused_lora false` for PEFT's forward)
and run the same training batches, taking turns step by step, so drift of a shared machine's speed hits both alike.
Reports the median step time of each and the median of the per-pair ratios, which is what to quote: a whole-run
figure (`bench/throughput.py --variant "peft-forward=--fused_lora false"`) moves by more than the change on a busy
machine. Writes bench/results/lora_step.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench._common import print_table, run_as_command, write_json  # noqa: E402
from ft_plugin.recipe import build_trainer, parse_args  # noqa: E402


def step_seconds(model: torch.nn.Module, batch: dict) -> float:
    """Wall time of one forward and backward pass (gradients cleared after)."""
    started = time.perf_counter()
    model(**batch).loss.backward()
    elapsed = time.perf_counter() - started
    model.zero_grad(set_to_none=True)
    return elapsed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default="minilm-l6", help="Default: the embedded MiniLM-L6.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=40, help="Timed steps of each model, alternating.")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--output", default="lora_step")
    options = parser.parse_args(argv)

    models, batches = {}, None
    for name, flag in (("fused (default)", "true"), ("PEFT forward", "false")):
        trainer = build_trainer(
            *parse_args(
                ["--model_name_or_path", options.model_name_or_path, "--method", "lora", "--fused_lora", flag,
                 "--output_dir", tempfile.mkdtemp(), "--max_train_samples", str(options.batch_size * 8),
                 "--max_seq_length", str(options.max_seq_length), "--report_to", "none", "--disable_tqdm", "true",
                 "--per_device_train_batch_size", str(options.batch_size)]
            )
        )  # fmt: skip
        models[name] = trainer.model.train()
        batches = batches or list(trainer.get_train_dataloader())  # the recipe's length-grouped batches
    for index in range(options.warmup):
        for model in models.values():
            step_seconds(model, batches[index % len(batches)])
    times: dict[str, list[float]] = {name: [] for name in models}
    for index in range(options.pairs):
        order = list(models) if index % 2 == 0 else list(reversed(models))
        for name in order:
            torch.manual_seed(index)  # the same dropout masks for both
            times[name].append(step_seconds(models[name], batches[index % len(batches)]))
    fused, peft = times.values()
    ratios = [p / f for f, p in zip(fused, peft)]
    rows = [
        {"forward": name, "median_step_ms": round(1000 * statistics.median(t), 1), "steps": len(t)}
        for name, t in times.items()
    ]
    summary = {"peft_over_fused_median_ratio": round(statistics.median(ratios), 3)}
    print_table(rows, ["forward", "median_step_ms", "steps"])
    print(f"PEFT forward / fused, median of {len(ratios)} paired steps: {summary['peft_over_fused_median_ratio']}x")
    report = {"setting": vars(options), "rows": rows, **summary, "ratios": [round(r, 4) for r in ratios]}
    print("Wrote", write_json(options.output, report))
    return report


if __name__ == "__main__":
    run_as_command(main)
