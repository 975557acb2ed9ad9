"""Training throughput: ft-plugin's recipe vs the hand-written PEFT-docs baseline vs a naive tutorial loop.

    python bench/throughput.py                      # LoRA and full FT, 3 repeats (about 10 minutes on 2 cores)
    python bench/throughput.py --methods lora --repeats 5 --steps 20
    python bench/throughput.py --methods lora --repeats 1 --profile     # where the time goes (torch.profiler)
    python bench/throughput.py --variant "bf16=--bf16 true --use_cpu true" --variant "compile=--torch_compile true"

Same data (the embedded tweets), batch size, max sequence length, steps and threads for every variant; the first
`--warmup` steps of each run are not timed; variants alternate within each repeat, and each repeat starts at another
run of the order (rotated), so no run is always first. Reports medians, ratios, and
achieved model FLOP/s as a share of an fp32 GEMM peak measured in the same run (in every repeat; the median), and as
a share of each run's own peak (the mean of the peaks measured just before and just after it; the median over the
repeats), which follows a drift of the machine's speed within a repeat.
Writes bench/results/throughput.json.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    CountingCollator,
    StepClock,
    encoder_matmul_parameters,
    frozen_input_parameters,
    gemm_peak_flops,
    print_table,
    record,
    run_as_command,
    training_flops,
    write_json,
)
from bench.baselines import naive_loop, peft_trainer  # noqa: E402
from ft_plugin.data import DataArguments, load_data  # noqa: E402
from ft_plugin.models import resolve_model  # noqa: E402
from ft_plugin.recipe import build_trainer, parse_args  # noqa: E402


def run_ft_plugin(options, method: str, clock: StepClock, flags: list[str] | tuple[str, ...] = ()) -> list:
    """The recipe's Trainer; `flags`: more recipe flags (a `--variant`), appended last so they win."""
    argv = [
        "--method", method, "--output_dir", tempfile.mkdtemp(), "--max_steps", str(options.warmup + options.steps),
        "--per_device_train_batch_size", str(options.batch_size), "--max_seq_length", str(options.max_length),
        "--max_train_samples", str(options.samples), "--eval_strategy", "no", "--save_strategy", "no",
        "--load_best_model_at_end", "false", "--logging_strategy", "no", "--dataloader_num_workers", "0",
    ]  # fmt: skip
    if options.model_name_or_path:
        argv += ["--model_name_or_path", options.model_name_or_path]
    argv += list(flags)
    trainer = build_trainer(*parse_args(argv), callbacks=[clock])
    trainer.data_collator = counter = CountingCollator(trainer.data_collator)
    trainer.train()
    return counter.batches


def run_baseline(options, method: str, clock: StepClock, texts, labels, num_labels) -> list:
    trainer = peft_trainer.build_trainer(
        options.model_path, texts, labels, num_labels, method, options.batch_size, options.max_length,
        options.warmup + options.steps, tempfile.mkdtemp(), [clock],
    )  # fmt: skip
    trainer.data_collator = counter = CountingCollator(trainer.data_collator)
    trainer.train()
    return counter.batches


def run_naive(options, method: str, clock: StepClock, texts, labels, num_labels) -> list:
    batches: list = []

    def on_step(batch):
        clock.tick()
        record(batches, batch)

    naive_loop.train(
        options.model_path, texts, labels, num_labels, method, options.batch_size, options.max_length,
        options.warmup + options.steps, on_step,
    )  # fmt: skip
    return batches


def profile_ft_plugin(options, method: str, top: int = 12) -> list[dict]:
    """torch.profiler over ft-plugin's training steps: the operators with the most self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run_ft_plugin(options, method, StepClock())
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [{"operator": e.key, "self_cpu_%": 100 * e.self_cpu_time_total / total, "calls": e.count} for e in events]
    print(f"\nWhere the time goes ({method}, ft-plugin, {options.warmup + options.steps} steps, self CPU time)")
    print_table(rows[:top], ["operator", "self_cpu_%", "calls"])
    return rows[:top]


def rotated(runs: list, repeat: int, repeats: int) -> list:
    """The runs of one repeat: the same order, started `repeat / repeats` of the way along it, so that no run is
    always first after the repeat's GEMM peak (a machine's speed drifts within a repeat)."""
    shift = repeat * len(runs) // repeats
    return runs[shift:] + runs[:shift]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--model_name_or_path", default=None, help="Default: the embedded MiniLM-L6.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12, help="Timed optimizer steps per run.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed optimizer steps per run.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="throughput", help="Name of the JSON file under bench/results/.")
    parser.add_argument("--profile", action="store_true", help="Also profile ft-plugin's steps: top operators.")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME=FLAGS",
        help='Also time ft-plugin with more recipe flags, side by side, e.g. --variant "no-attn-dropout=--attention_dropout 0".',
    )  # fmt: skip
    options = parser.parse_args(argv)
    options.samples = options.batch_size * (options.warmup + options.steps)
    options.model_path = resolve_model(options.model_name_or_path).path

    data = load_data(DataArguments(max_train_samples=options.samples))
    texts, labels = data.splits["train"]["text"][:], data.splits["train"]["label"][:]
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(options.model_path)
    encoder = AutoModel.from_pretrained(options.model_path)
    matmul_params, input_only_params = encoder_matmul_parameters(encoder), frozen_input_parameters(encoder)
    del encoder

    variants = {
        "ft-plugin": lambda m, c: run_ft_plugin(options, m, c),
        "baseline (PEFT docs Trainer)": lambda m, c: run_baseline(options, m, c, texts, labels, len(data.labels)),
        "naive loop (pad to max)": lambda m, c: run_naive(options, m, c, texts, labels, len(data.labels)),
    }
    for spec in options.variant:  # candidate speed-ups, timed in the same repeats as the default recipe
        name, _, flags = spec.partition("=")
        extra = shlex.split(flags)
        variants[f"ft-plugin {name}"] = lambda m, c, extra=extra: run_ft_plugin(options, m, c, extra)
    measured: dict[tuple[str, str], list[dict]] = {}
    peaks = []  # the GEMM peak in every repeat, beside the runs it divides: a machine's speed drifts
    peaks_after_runs = []
    runs_in_order = [(method, name) for method in options.methods for name in variants]
    for repeat in range(options.repeats):
        peaks.append(gemm_peak_flops(config.hidden_size))
        print(f"repeat {repeat + 1}: fp32 GEMM peak {peaks[-1] / 1e9:.1f} GFLOP/s")
        peak_before = peaks[-1]
        for method, name in rotated(runs_in_order, repeat, options.repeats):
            run = variants[name]
            clock = StepClock()
            batches = run(method, clock)[options.warmup :]
            seconds = clock.seconds_after(options.warmup)
            peak_after = gemm_peak_flops(config.hidden_size)  # the run's own peak: the mean of these two
            peaks_after_runs.append(peak_after)
            flops = training_flops(
                batches, matmul_params, config.num_hidden_layers, config.hidden_size, method == "full",
                input_only_params,
            )  # fmt: skip
            measured.setdefault((method, name), []).append(
                {
                    "samples_per_s": sum(b[0] for b in batches) / seconds,
                    "real_tokens_per_s": sum(b[2] for b in batches) / seconds,
                    "padding_share": 1 - sum(b[2] for b in batches) / sum(b[0] * b[1] for b in batches),
                    "model_flops_per_s": flops / seconds,
                    "share_of_local_peak": flops / seconds / ((peak_before + peak_after) / 2),
                }
            )
            peak_before = peak_after
            print(
                f"repeat {repeat + 1}: {method:5s} {name:30s} {measured[(method, name)][-1]['samples_per_s']:.2f} samples/s"
            )

    peak = statistics.median(peaks)
    rows = []
    for (method, name), runs in measured.items():
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        rows.append(
            {"method": method, "variant": name, **median, "share_of_gemm_peak": median["model_flops_per_s"] / peak}
        )
    for row in rows:
        by_name = {r["variant"]: r["samples_per_s"] for r in rows if r["method"] == row["method"]}
        row["vs_baseline"] = row["samples_per_s"] / by_name["baseline (PEFT docs Trainer)"]
        row["vs_naive"] = row["samples_per_s"] / by_name["naive loop (pad to max)"]
        row["vs_ft_plugin"] = row["samples_per_s"] / by_name["ft-plugin"]
    print(
        f"\nfp32 GEMM peak (hidden {config.hidden_size}): {peak / 1e9:.1f} GFLOP/s; medians of {options.repeats} repeats"
    )
    print_table(
        [
            {
                **r,
                "GFLOP/s": r["model_flops_per_s"] / 1e9,
                "% peak": 100 * r["share_of_gemm_peak"],
                "% run's peak": 100 * r["share_of_local_peak"],
            }
            for r in rows
        ],
        [
            "method",
            "variant",
            "samples_per_s",
            "real_tokens_per_s",
            "padding_share",
            "GFLOP/s",
            "% peak",
            "% run's peak",
            "vs_baseline",
            "vs_naive",
            *(["vs_ft_plugin"] if options.variant else []),
        ],
    )
    profile = profile_ft_plugin(options, options.methods[0]) if options.profile else None
    settings = {k: v for k, v in vars(options).items() if k != "model_path"}
    payload = {
        "settings": settings,
        "gemm_peak_flops": peak,
        "gemm_peaks": peaks,
        "gemm_peaks_after_runs": peaks_after_runs,
        "rows": rows,
        "runs": [{"method": m, "variant": n, "per_repeat": runs} for (m, n), runs in measured.items()],
        "profile": profile,
    }
    path = write_json(options.output, payload)
    print(f"\nWrote {path}")
    return {"rows": rows, "gemm_peak_flops": peak}


if __name__ == "__main__":
    run_as_command(main)
