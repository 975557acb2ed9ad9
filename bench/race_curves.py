"""Validation curves of `--method auto`'s candidates: when does ranking by validation loss become trustworthy?

    python bench/race_curves.py --max_train_samples 2000 --num_train_epochs 2 --max_seq_length 64 \
        --max_eval_samples 300 --eval_every 7 --until 0.5

Each method starts its full run (the full run's schedule, data order and seed, as in the race) and is evaluated on
the validation split every `--eval_every` optimizer steps until `--until` of the run. For every evaluated step the
table gives each method's validation loss, the methods ranked by it, and Kendall tau between that ranking and the
one at the last evaluated step: a race rung placed before tau settles ranks methods by how fast they start, not by
where they go (docs/selection.md). Writes bench/results/race_curves.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import print_table, run_as_command, write_json  # noqa: E402
from ft_plugin.auto import DEFAULT_AUTO_METHODS, StopAtStep  # noqa: E402
from ft_plugin.data import TextClassificationData  # noqa: E402


def curve(argv: list[str], stop: int, data: TextClassificationData) -> list[dict]:
    """One method's validation (step, loss, accuracy) at every evaluation until optimizer step `stop`."""
    from ft_plugin.recipe import build_trainer, parse_args

    trainer = build_trainer(*parse_args(argv), callbacks=[StopAtStep(stop)], data=data)
    trainer.train()
    return [
        {"step": h["step"], "eval_loss": h["eval_loss"], "eval_accuracy": h["eval_accuracy"]}
        for h in trainer.state.log_history
        if "eval_loss" in h
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default="minilm-l6")
    parser.add_argument("--train_file", default=None, help="Default: the embedded tweets.")
    parser.add_argument("--methods", default=f"{DEFAULT_AUTO_METHODS},bitfit")
    parser.add_argument("--max_train_samples", type=int, default=2000)
    parser.add_argument("--max_eval_samples", type=int, default=300)
    parser.add_argument("--num_train_epochs", type=float, default=2)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--eval_every", type=int, default=7)
    parser.add_argument("--until", type=float, default=0.5, help="Share of the full run to follow.")
    parser.add_argument("--output", default="race_curves")
    args = parser.parse_args(argv)

    from scipy.stats import kendalltau

    from ft_plugin.data import load_data
    from ft_plugin.recipe import parse_args, total_training_steps

    common = [
        "--model_name_or_path", args.model_name_or_path, "--max_train_samples", str(args.max_train_samples),
        "--max_eval_samples", str(args.max_eval_samples), "--num_train_epochs", str(args.num_train_epochs),
        "--max_seq_length", str(args.max_seq_length), "--eval_strategy", "steps", "--eval_steps", str(args.eval_every),
        "--save_strategy", "no", "--load_best_model_at_end", "false", "--report_to", "none", "--disable_tqdm", "true",
        "--seed", "42",
    ]  # fmt: skip
    if args.train_file:
        common += ["--train_file", args.train_file]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    _, data_args, _, training_args = parse_args([*common, "--method", methods[0]])
    data = load_data(data_args)  # as in the race: every method's run on the same loaded data
    full_steps = total_training_steps(training_args, len(data.splits["train"]))
    curves = {}
    for method in methods:
        argv = [*common, "--method", method, "--output_dir", tempfile.mkdtemp(prefix="bench-curves-")]
        curves[method] = curve(argv, max(1, round(full_steps * args.until)), data)
        print(f"{method}: {[(p['step'], round(p['eval_loss'], 4)) for p in curves[method]]}", flush=True)

    steps = sorted(set.intersection(*({p["step"] for p in points} for points in curves.values())))
    loss = {m: {p["step"]: p["eval_loss"] for p in points} for m, points in curves.items()}
    last = [loss[m][steps[-1]] for m in methods]
    rows = []
    for step in steps:
        ranked = sorted(methods, key=lambda m: loss[m][step])
        tau = kendalltau([loss[m][step] for m in methods], last).statistic  # rank agreement with the last step
        rows.append(
            {
                "step": step,
                "share_of_run": round(step / full_steps, 3),
                **{m: round(loss[m][step], 4) for m in methods},
                "ranking": " < ".join(ranked),
                "tau_vs_last": round(float(tau), 3),
            }
        )
    print_table(rows, ["step", "share_of_run", *methods, "tau_vs_last"])
    for row in rows:
        print(f"step {row['step']}: {row['ranking']}")
    report = {"setting": vars(args), "full_steps": full_steps, "curves": curves, "rows": rows}
    print("Wrote", write_json(args.output, report))
    return report


if __name__ == "__main__":
    run_as_command(main)
