"""Validation curves of `--method auto`'s candidates, and the races they imply: which rung schedule chooses well, cheaply?

    python bench/race_curves.py --max_train_samples 2000 --num_train_epochs 2 --max_seq_length 64 \
        --max_eval_samples 300 --eval_every 7 --until 0.6 --sweep bench/results/auto-eight-methods.json

Each method starts its full run (the full run's schedule, data order and seed, as in the race) and is evaluated on
the validation split every `--eval_every` optimizer steps until `--until` of the run, and at every rung of each
`--schedules` entry (`horizon:eta`). For every evaluated step the table gives each method's validation loss and
Kendall tau between the ranking then and the one at the last evaluated step: a race rung placed before tau settles
ranks methods by how fast they start, not by where they go (docs/selection.md). Each schedule is then replayed on
the curves with the race's own ranking (`ft_plugin.auto`: a race run stopped and resumed equals the uninterrupted
run, so the replay sees the scores the race would): its winner and the optimizer steps each method trains. With
`--sweep` (a `bench/auto.py` JSON of the same setting) each replay also gets the winner's test accuracy gap to the
sweep's best and the time ratio its steps would cost, from each method's seconds per step in that sweep (training
only: the race's evaluations and start-ups come on top). `--metrics loss accuracy` replays each schedule with each
`--auto_metric`; `--curves` replays the curves of an earlier run's JSON instead of training again. Writes
bench/results/race_curves.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import print_table, recipe_flags, run_as_command, write_json  # noqa: E402
from ft_plugin.auto import (  # noqa: E402
    AUTO_METRICS,
    DEFAULT_AUTO_METHODS,
    AutoArguments,
    Share,
    StopAtStep,
    kept_count,
    rank_methods,
    rung_steps,
    tie_margin,
)
from ft_plugin.data import TextClassificationData  # noqa: E402


class EvaluateAt(TrainerCallback):
    """Evaluates after each of `steps` (the rungs of the schedules replayed), besides the Trainer's own `eval_steps`,
    and leaves the random state as it was before each evaluation: evaluating draws from torch's generator (a
    DataLoader's seed), which would change the dropout masks of the steps after it. The race's runs evaluate after
    their checkpoint and resume with the checkpoint's random state, so only an evaluation that leaves no trace sees
    the scores the race sees."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps
        self.saved: tuple | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            control.should_evaluate = True
        if control.should_evaluate:
            self.saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())

    def on_evaluate(self, args, state, control, **kwargs):
        if self.saved is not None:
            python_state, numpy_state, torch_state = self.saved
            random.setstate(python_state)
            np.random.set_state(numpy_state)
            torch.set_rng_state(torch_state)
            self.saved = None


def curve(argv: list[str], stop: int, data: TextClassificationData, rungs: set[int]) -> list[dict]:
    """One method's validation (step, loss, accuracy) at every evaluation until optimizer step `stop`."""
    from ft_plugin.recipe import build_trainer, parse_args

    trainer = build_trainer(*parse_args(argv), callbacks=[StopAtStep(stop), EvaluateAt(rungs)], data=data)
    trainer.train()
    return [
        {"step": h["step"], **{f"eval_{metric}": h[f"eval_{metric}"] for metric in AUTO_METRICS}}
        for h in trainer.state.log_history
        if "eval_loss" in h
    ]


def parse_schedule(text: str) -> tuple[float, int]:
    """`"0.5:4"` -> (horizon 0.5, eta 4), `"1/3:3"` -> (1/3, 3); a bare horizon takes the race's default eta."""
    horizon, _, eta = text.partition(":")
    try:
        return Share(horizon), int(eta or AutoArguments.auto_eta)
    except ValueError:
        raise SystemExit(
            f"race_curves.py: error: --schedules {text!r} is not horizon:eta, e.g. 0.4:4 or 1/3:3."
        ) from None


def replay(
    scores: dict[str, dict[int, float]],
    full_steps: int,
    horizon: float,
    eta: int,
    losses: dict[str, dict[int, float]] | None = None,
    higher_is_better: bool = False,
    metric: str = "loss",
    validation_size: int = 0,
) -> dict:
    """The race `--auto_horizon horizon --auto_eta eta` on these curves, ranked as the race ranks (`scores`: the
    validation `metric` on `validation_size` texts, ties to the lower of `losses`, by default the scores themselves):
    its rungs, winner and each method's steps (its race runs', the winner's whole run)."""
    losses = losses or scores
    survivors = list(scores)
    rungs = rung_steps(full_steps, len(survivors), horizon, eta)
    trained = dict.fromkeys(survivors, 0)
    kept_per_rung = []
    for rung, steps in enumerate(rungs):
        for method in survivors:
            trained[method] = steps
        last_rung = rung == len(rungs) - 1
        ranked = rank_methods(
            {m: scores[m][steps] for m in survivors},
            {m: losses[m][steps] for m in survivors},
            higher_is_better,
            tie_margin(metric, validation_size, last_rung),
        )
        survivors = ranked[: kept_count(len(ranked), last_rung=last_rung, eta=eta)]
        kept_per_rung.append(survivors)
    winner = survivors[0]
    trained[winner] = full_steps
    return {"rungs": rungs, "kept": kept_per_rung, "winner": winner, "steps_trained": trained}


def with_sweep(replayed: dict, sweep: dict, full_steps: int) -> dict:
    """A replay's accuracy gap to the sweep's best (points) and its time ratio from the sweep's seconds per step."""
    exhaustive = sweep["exhaustive"]
    best = max(exhaustive.values(), key=lambda row: row["test_accuracy"])["test_accuracy"]
    seconds = sum(exhaustive[m]["seconds"] / full_steps * steps for m, steps in replayed["steps_trained"].items())
    return {
        "winner_test_accuracy": exhaustive[replayed["winner"]]["test_accuracy"],
        "gap_points": round(100 * (best - exhaustive[replayed["winner"]]["test_accuracy"]), 2),
        "training_time_ratio": round(seconds / sum(row["seconds"] for row in exhaustive.values()), 3),
    }


def follow(args: argparse.Namespace, schedules: list[tuple[float, int]]) -> tuple[dict[str, list[dict]], int, int]:
    """Each method's validation curve (`curve`) on the same loaded data, the full run's optimizer steps and the
    number of validation texts."""
    from ft_plugin.data import load_data
    from ft_plugin.recipe import parse_args, total_training_steps

    common = recipe_flags(
        args, "model_name_or_path", "max_train_samples", "max_eval_samples", "num_train_epochs", "max_seq_length",
        "train_file", "validation_file", "test_file", "text_column", "label_column",
    ) + [
        "--eval_strategy", "steps", "--eval_steps", str(args.eval_every),
        "--save_strategy", "no", "--load_best_model_at_end", "false", "--report_to", "none", "--disable_tqdm", "true",
        "--seed", "42",
    ]  # fmt: skip
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    _, data_args, _, training_args = parse_args([*common, "--method", methods[0]])
    data = load_data(data_args)  # as in the race: every method's run on the same loaded data
    full_steps = total_training_steps(training_args, len(data.splits["train"]))
    rungs = {step for h, eta in schedules for step in rung_steps(full_steps, len(methods), h, eta)}
    stop = max(round(full_steps * args.until), *rungs, 1)
    curves = {}
    for method in methods:
        argv = [*common, "--method", method, "--output_dir", tempfile.mkdtemp(prefix="bench-curves-")]
        curves[method] = curve(argv, stop, data, rungs)
        print(f"{method}: {[(p['step'], round(p['eval_loss'], 4)) for p in curves[method]]}", flush=True)
    return curves, full_steps, len(data.splits["validation"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default="minilm-l6")
    parser.add_argument("--train_file", default=None, help="Default: the embedded tweets.")
    parser.add_argument("--validation_file", default=None, help="Default: carved from the train file.")
    parser.add_argument(
        "--test_file", default=None, help="Default: carved from the train file (pass the sweep's: same training rows)."
    )
    parser.add_argument("--text_column", default=None, help="Default: the recipe's (a column named text).")
    parser.add_argument("--label_column", default=None, help="Default: the recipe's (a column named label).")
    parser.add_argument("--methods", default=DEFAULT_AUTO_METHODS)
    parser.add_argument("--max_train_samples", type=int, default=2000)
    parser.add_argument("--max_eval_samples", type=int, default=300)
    parser.add_argument("--num_train_epochs", type=float, default=2)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--eval_every", type=int, default=7)
    parser.add_argument("--until", type=float, default=0.6, help="Share of the full run to follow.")
    parser.add_argument(
        "--schedules",
        nargs="+",
        default=["0.4:4", "0.3333333333333333:3", "0.3333333333333333:4", "0.5:4", "0.5:2"],
        help="Races to replay on the curves, as horizon:eta (rungs past --until are evaluated too).",
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=[AutoArguments.auto_metric],
        choices=AUTO_METRICS,
        help="Replay with each --auto_metric (default: the race's).",
    )
    parser.add_argument(
        "--curves", default=None, help="Replay the curves of an earlier run (its JSON) instead of training again."
    )
    parser.add_argument("--sweep", default=None, help="A bench/auto.py JSON of the same setting: gaps and times.")
    parser.add_argument(
        "--validation_size", type=int, default=0, help="With --curves of a JSON that does not record it."
    )
    parser.add_argument("--output", default="race_curves")
    args = parser.parse_args(argv)

    from scipy.stats import kendalltau

    schedules = [parse_schedule(text) for text in args.schedules]
    if args.curves:
        earlier = json.loads(Path(args.curves).read_text())
        curves, full_steps = earlier["curves"], earlier["full_steps"]
        missing = [m for m in args.metrics if any(f"eval_{m}" not in p for points in curves.values() for p in points)]
        if missing:
            raise SystemExit(f"race_curves.py: error: {args.curves} has no {', '.join(missing)} curves (rerun them).")
        evaluated = set.intersection(*({p["step"] for p in points} for points in curves.values()))
        for horizon, eta in schedules:
            if not set(rung_steps(full_steps, len(curves), horizon, eta)) <= evaluated:
                raise SystemExit(
                    f"race_curves.py: error: {args.curves} was not evaluated at every rung of {horizon:g}:{eta} "
                    "(rerun the curves with that schedule)."
                )
        validation_size = earlier.get("validation_size") or args.validation_size
        if "accuracy" in args.metrics and not validation_size:
            raise SystemExit(
                f"race_curves.py: error: {args.curves} does not record its validation size: pass --validation_size "
                "(accuracy ties within a number of validation examples)."
            )
    else:
        curves, full_steps, validation_size = follow(args, schedules)
    methods = list(curves)

    steps = sorted(set.intersection(*({p["step"] for p in points} for points in curves.values())))
    metric = {
        name: {m: {p["step"]: p[f"eval_{name}"] for p in points} for m, points in curves.items()}
        for name in {"loss", *args.metrics}
    }
    loss = metric["loss"]
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
    sweep = json.loads(Path(args.sweep).read_text()) if args.sweep else None
    replays = []
    for name in args.metrics:
        for horizon, eta in schedules:
            replayed = replay(metric[name], full_steps, horizon, eta, loss, name != "loss", name, validation_size)
            replayed = {"metric": name, "horizon": round(horizon, 4), "eta": eta, **replayed}
            replays.append(replayed | (with_sweep(replayed, sweep, full_steps) if sweep else {}))
    columns = ["metric", "horizon", "eta", "rungs", "winner"] + (["gap_points", "training_time_ratio"] if sweep else [])
    print_table([r | {"rungs": " ".join(map(str, r["rungs"]))} for r in replays], columns)
    report = {
        "setting": vars(args),
        "full_steps": full_steps,
        "validation_size": validation_size,
        "curves": curves,
        "rows": rows,
        "replays": replays,
    }
    print("Wrote", write_json(args.output, report))
    return report


if __name__ == "__main__":
    run_as_command(main)
