"""One LoRA training step (forward + backward): `--fused_lora true` (the default) against the update in one addmm
only and against PEFT's own forward.

    python bench/lora_step.py                 # MiniLM-L6, the recipe's batch of 32 tweets at max length 128

The models come from the recipe (`build_trainer`, same seed and weights; `--fused_lora false` for PEFT's forward;
"addmm only": the default's layers without the one-function path, the twenty-first session's fused forward) and run
the same training batches, taking turns step by step (the order rotating), so drift of a shared machine's speed hits
all alike. Reports the median step time of each and the median of the per-step ratios to the default, which is what
to quote: a whole-run figure (`bench/throughput.py --variant "peft-forward=--fused_lora false"`) moves by more than
the change on a busy machine. Writes bench/results/lora_step.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from peft.tuners.lora.layer import Linear as LoraLinear  # noqa: E402

from bench._common import print_table, run_as_command, write_json  # noqa: E402
from ft_plugin.methods.fused_lora import FusedLoraLinear  # noqa: E402
from ft_plugin.recipe import build_trainer, parse_args  # noqa: E402


class AddmmOnlyLoraLinear(FusedLoraLinear):
    """The fused layer without `_LoraLinearFunction`: PEFT's base layer and autograd, the update in one addmm."""

    def _single_function_adapter(self, x: torch.Tensor) -> None:
        return None


def lora_layer_classes(model: torch.nn.Module) -> dict[str, int]:
    """How many of the model's LoRA linear layers have each class (the forward they run)."""
    classes = Counter(type(m).__name__ for m in model.modules() if isinstance(m, LoraLinear))
    return dict(sorted(classes.items()))


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
    parser.add_argument("--pairs", type=int, default=40, help="Timed steps of each model, taking turns.")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--output", default="lora_step")
    options = parser.parse_args(argv)

    models, batches = {}, None
    for name, flag in (("fused (default)", "true"), ("addmm only", "true"), ("PEFT forward", "false")):
        trainer = build_trainer(
            *parse_args(
                ["--model_name_or_path", options.model_name_or_path, "--method", "lora", "--fused_lora", flag,
                 "--output_dir", tempfile.mkdtemp(), "--max_train_samples", str(options.batch_size * 8),
                 "--max_seq_length", str(options.max_seq_length), "--report_to", "none", "--disable_tqdm", "true",
                 "--per_device_train_batch_size", str(options.batch_size)]
            )
        )  # fmt: skip
        models[name] = trainer.model.train()
        if name == "addmm only":
            for module in models[name].modules():
                if type(module) is FusedLoraLinear:
                    module.__class__ = AddmmOnlyLoraLinear
        batches = batches or list(trainer.get_train_dataloader())  # the recipe's length-grouped batches
    for index in range(options.warmup):
        for model in models.values():
            step_seconds(model, batches[index % len(batches)])
    times: dict[str, list[float]] = {name: [] for name in models}
    for index in range(options.pairs):
        names = list(models)
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            torch.manual_seed(index)  # the same dropout masks for every forward
            times[name].append(step_seconds(models[name], batches[index % len(batches)]))
    default = times["fused (default)"]
    ratios = {name: [t / d for t, d in zip(steps, default)] for name, steps in times.items()}
    rows = [
        {
            "forward": name,
            "median_step_ms": round(1000 * statistics.median(steps), 1),
            "steps": len(steps),
            "over_default": round(statistics.median(ratios[name]), 3),  # median of the per-step ratios
            "steps_slower_than_default": sum(r > 1 for r in ratios[name]),
            "lora_layers": lora_layer_classes(models[name]),  # which forward the timed layers ran
        }
        for name, steps in times.items()
    ]
    print_table(rows, ["forward", "median_step_ms", "steps", "over_default", "steps_slower_than_default"])
    print(f"Step time over the default's, median of {options.pairs} paired steps (> 1: the default is faster).")
    report = {
        "setting": vars(options),
        "rows": rows,
        "ratios": {name: [round(r, 4) for r in values] for name, values in ratios.items() if name != "fused (default)"},
    }
    print("Wrote", write_json(options.output, report))
    return report


if __name__ == "__main__":
    run_as_command(main)
