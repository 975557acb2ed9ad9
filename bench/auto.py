"""Benchmark `--method auto` against an exhaustive sweep: every candidate method trained fully, on the same data.

    python bench/auto.py --max_train_samples 2000 --num_train_epochs 2 --max_seq_length 64 --max_eval_samples 300

Reports each method's test accuracy and time, the best of them, and `auto`'s choice, accuracy and time (race + final
training), and whether auto's result equals its winner's run in the sweep (the race's checkpoint is where the winner's
full run resumes, so it should, to float precision). Prints a table; writes bench/results/auto.json.
`--auto_horizon 1/3 0.5 --auto_eta 3 4 --auto_metric accuracy loss` races once per horizon, eta and metric against
the one sweep (a row and a `races` entry each).
Targets (issue 7): within 1 accuracy point of the best, in at most 1/3 of the exhaustive sweep's time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import print_table, recipe_flags, run_as_command, write_json  # noqa: E402
from ft_plugin.auto import DEFAULT_AUTO_METHODS, AutoArguments, Share  # noqa: E402
from ft_plugin.recipe import main as recipe_main  # noqa: E402


def run(argv: list[str]) -> tuple[dict, float]:
    started = time.perf_counter()
    metrics = recipe_main(argv)
    return metrics, time.perf_counter() - started


def bench(args: argparse.Namespace) -> dict:
    common = recipe_flags(
        args, "model_name_or_path", "max_train_samples", "max_eval_samples", "max_predict_samples", "num_train_epochs",
        "max_seq_length", "train_file", "validation_file", "test_file", "text_column", "label_column",
    ) + [  # splits not given are carved from the train file
        "--eval_strategy", "no", "--save_strategy", "no",
        "--load_best_model_at_end", "false", "--report_to", "none", "--disable_tqdm", "true", "--seed", "42",
    ]  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bench_auto_"))
    exhaustive = {}
    for method in args.methods.split(","):
        metrics, seconds = run([*common, "--method", method, "--output_dir", str(work / method.replace("+", "_"))])
        exhaustive[method] = {k: metrics[k] for k in ("test_accuracy", "test_loss")} | {"seconds": round(seconds, 1)}
        print(f"exhaustive {method}: test accuracy {metrics['test_accuracy']:.4f} in {seconds:.0f}s", flush=True)
    best = max(exhaustive, key=lambda m: exhaustive[m]["test_accuracy"])
    sweep_seconds = sum(row["seconds"] for row in exhaustive.values())
    races, race_rows = zip(
        *(
            race_against_sweep(common, args, schedule, work / f"auto-{index}", exhaustive, best, sweep_seconds)
            for index, schedule in enumerate(itertools.product(args.auto_horizon, args.auto_eta, args.auto_metric))
        )
    )
    rows = [{"run": method, **row} for method, row in exhaustive.items()] + list(race_rows)
    report = {
        "setting": {k: v for k, v in vars(args).items() if k != "output"},
        "exhaustive": exhaustive,
        "exhaustive_seconds": round(sweep_seconds, 1),
        "best_method": best,
        "best_test_accuracy": exhaustive[best]["test_accuracy"],
        **races[0],  # the first race at the top level, as with a single --auto_horizon and --auto_eta
        "races": list(races),
        "rows": rows,
    }
    print_table(rows, ["run", "test_accuracy", "test_loss", "seconds"])
    print(f"best of the exhaustive sweep: {best} {report['best_test_accuracy']:.4f} ({sweep_seconds:.0f}s in all)")
    for race in races:
        print(
            f"auto (horizon {race['auto_horizon']:.3g}, eta {race['auto_eta']}, {race['auto_metric']}) chose "
            f"{race['auto_method']}: "
            f"{race['auto_test_accuracy']:.4f} "
            f"in {race['auto_seconds']:.0f}s (gap {race['accuracy_gap_points']} points, time ratio {race['time_ratio']})"
        )
    return report


def race_against_sweep(
    common: list[str],
    args: argparse.Namespace,
    schedule: tuple[float, int, str],
    output_dir: Path,
    exhaustive: dict,
    best: str,
    sweep_seconds: float,
) -> tuple[dict, dict]:
    """`--method auto` at one (horizon, eta, metric) on the sweep's data and methods, scored against the sweep: the
    race's report and its row of the table."""
    horizon, eta, metric = schedule
    metrics, seconds = run(
        [*common, "--method", "auto", "--auto_methods", args.methods, "--auto_horizon", str(horizon),
         "--auto_eta", str(eta), "--auto_metric", metric, "--output_dir", str(output_dir)]
    )  # fmt: skip
    race = json.loads((output_dir / "auto_race.json").read_text())
    row = {
        "run": f"auto (horizon {horizon:.3g}, eta {eta}, {metric}) -> {race['winner']}",
        **{k: metrics[k] for k in ("test_accuracy", "test_loss")},
        "seconds": round(seconds, 1),
    }
    report = {
        "auto_horizon": horizon,
        "auto_eta": eta,
        "auto_metric": metric,
        "auto_method": race["winner"],
        "auto_test_accuracy": metrics["test_accuracy"],
        "auto_seconds": round(seconds, 1),
        "auto_race_seconds": race["seconds"],
        "accuracy_gap_points": round(100 * (exhaustive[best]["test_accuracy"] - metrics["test_accuracy"]), 2),
        "time_ratio": round(seconds / sweep_seconds, 3),
        "auto_equals_its_sweep_run": abs(metrics["test_loss"] - exhaustive[race["winner"]]["test_loss"]) < 1e-6,
        "race": race,
    }
    return report, row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default="minilm-l6", help="Default: the embedded MiniLM-L6.")
    parser.add_argument("--train_file", default=None, help="Default: the embedded tweets.")
    parser.add_argument("--validation_file", default=None, help="Default: carved from --train_file.")
    parser.add_argument("--test_file", default=None, help="Default: carved from --train_file.")
    parser.add_argument("--text_column", default=None, help="Default: the recipe's (a column named text).")
    parser.add_argument("--label_column", default=None, help="Default: the recipe's (a column named label).")
    parser.add_argument("--methods", default=DEFAULT_AUTO_METHODS)
    parser.add_argument("--max_train_samples", type=int, default=2000)
    parser.add_argument("--max_eval_samples", type=int, default=500)
    parser.add_argument("--max_predict_samples", type=int, default=1000)
    parser.add_argument("--num_train_epochs", type=float, default=2)
    parser.add_argument("--max_seq_length", type=int, default=128)
    for name, kind in (("auto_horizon", Share), ("auto_eta", int), ("auto_metric", str)):
        parser.add_argument(
            f"--{name}", type=kind, nargs="+", default=[getattr(AutoArguments, name)],
            help="One or more (a horizon may be a fraction: 1/3); every horizon, eta and metric races against the "
            "one sweep (a row each).",
        )  # fmt: skip
    parser.add_argument("--output", default="auto", help="Name of the JSON written under bench/results/.")
    arguments = parser.parse_args(argv)
    report = bench(arguments)
    print("Wrote", write_json(arguments.output, report))
    return report


if __name__ == "__main__":
    run_as_command(main)
