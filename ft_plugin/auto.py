"""`--method auto`: choose the delta method from monitored validation performance, then train it fully.

A successive-halving race (Jamieson & Talwalkar, 2016): every candidate method trains for a small budget of
optimizer steps and is evaluated on the validation split; the best `1/eta` go on to a budget `eta` times larger,
until one is left (or the next budget would be a full run). Each dropped method is logged with the reason. The
race's flags (`--auto_methods`, `--auto_budget`, `--auto_eta`) are read here and removed before the recipe parses
the rest, so the final run is exactly the recipe with `--method <winner>`.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from .errors import MethodError

logger = logging.getLogger("ft_plugin")

DEFAULT_AUTO_METHODS = "lora,bitfit,adapter,ia3,prefix,lora+bitfit"


@dataclass
class AutoArguments:
    """The race behind `--method auto`."""

    auto_methods: str = field(
        default=DEFAULT_AUTO_METHODS, metadata={"help": "Comma-separated methods that race for --method auto."}
    )
    auto_budget: float = field(
        default=0.05, metadata={"help": "First rung: this fraction of the full run's optimizer steps per method."}
    )
    auto_eta: int = field(default=3, metadata={"help": "Keep the best 1/eta of the methods at each rung (>= 2)."})


@dataclass
class RaceResult:
    """What the race did: the winner, each rung's scores, and why each other method was dropped."""

    winner: str
    rungs: list[dict] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def requested_method(argv: list[str], method: str | None) -> str:
    """The method a recipe's argv asks for: `--method` wins over the recipe's own."""
    from .recipe import ModelArguments

    if "--method" not in argv:
        return method or ModelArguments.method
    chosen, _ = HfArgumentParser(ModelArguments).parse_args_into_dataclasses(argv, return_remaining_strings=True)
    return chosen.method


def race(argv: list[str], auto: AutoArguments) -> RaceResult:
    """Run the successive-halving race on the recipe flags `argv` (without the --auto_* flags)."""
    from .data import load_data
    from .recipe import build_trainer, load_base, parse_args, total_training_steps
    from .search import compatible_methods

    started = time.perf_counter()
    methods = [m.strip() for m in auto.auto_methods.split(",") if m.strip()]
    if not methods:
        raise MethodError("--auto_methods is empty: list the methods to race, e.g. lora,bitfit,adapter.")
    if auto.auto_eta < 2 or not 0 < auto.auto_budget <= 1:
        raise MethodError("--auto_eta must be at least 2 and --auto_budget in (0, 1]; defaults: 3 and 0.05.")
    for method in methods:
        parse_args([*argv, "--method", method])  # unknown methods and bad flags fail here, in one line
    model_args, data_args, method_args, training_args = parse_args([*argv, "--method", methods[0]])
    data = load_data(data_args)
    base, _ = load_base(model_args, data.labels)
    survivors, dropped = compatible_methods(methods, base, method_args)
    dropped = {m: f"cannot be applied to {base.name_or_path}: {reason}" for m, reason in dropped.items()}
    del base
    if not survivors:
        raise MethodError(f"None of --auto_methods {auto.auto_methods} applies to this model: choose other methods.")
    full_steps = total_training_steps(training_args, len(data.splits["train"]))
    steps = max(1, round(full_steps * auto.auto_budget))
    result = RaceResult(winner=survivors[0], dropped=dropped)
    with tempfile.TemporaryDirectory() as scratch:
        while len(survivors) > 1 and steps < full_steps:
            scores, losses = {}, {}
            for method in survivors:
                race_argv = [
                    *argv, "--method", method, "--max_steps", str(steps), "--output_dir", f"{scratch}/{method}",
                    "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
                    "--report_to", "none", "--disable_tqdm", "true",
                ]  # fmt: skip
                trainer = build_trainer(*parse_args(race_argv), data=data)
                trainer.train()
                metrics = trainer.evaluate()
                scores[method] = metrics["eval_accuracy"]
                losses[method] = metrics["eval_loss"]
                logger.info("auto: rung %d, %s: eval accuracy %.4f after %d steps", len(result.rungs), method, scores[method], steps)  # fmt: skip
            ranked = sorted(survivors, key=lambda m: (scores[m], -losses[m]), reverse=True)  # ties: lower loss
            keep = max(1, math.ceil(len(ranked) / auto.auto_eta))
            threshold = scores[ranked[keep - 1]]
            for method in ranked[keep:]:
                dropped[method] = (
                    f"rung {len(result.rungs)} ({steps} steps): eval accuracy {scores[method]:.4f} below the "
                    f"{keep} kept (lowest kept {threshold:.4f})"
                )
                logger.info("auto: dropped %s: %s", method, dropped[method])
            result.rungs.append({"steps": steps, "scores": scores, "kept": ranked[:keep]})
            survivors = ranked[:keep]
            steps *= auto.auto_eta
    result.winner = survivors[0]
    result.seconds = round(time.perf_counter() - started, 2)
    logger.info("auto: chose %s after %d rung(s) in %.0fs", result.winner, len(result.rungs), result.seconds)
    return result


def resolve_auto(argv: list[str], method: str | None = None) -> list[str]:
    """Recipe flags -> the same flags with a concrete method. A run that does not ask for `auto` is returned as is;
    one that does runs the race, writes `auto_race.json` in its output folder, and gets `--method <winner>`."""
    if requested_method(argv, method) != "auto":
        return argv
    from .recipe import parse_args

    auto, rest = HfArgumentParser(AutoArguments).parse_args_into_dataclasses(argv, return_remaining_strings=True)
    rest = _without_method(rest)
    result = race(rest, auto)
    output_dir = Path(parse_args([*rest, "--method", result.winner])[3].output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "auto_race.json").write_text(json.dumps({**asdict(auto), **asdict(result)}, indent=2))
    return [*rest, "--method", result.winner]


def _without_method(argv: list[str]) -> list[str]:
    """`argv` less its `--method X` pairs (the race sets the method of each run)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--method":
            skip = True
        elif not arg.startswith("--method="):
            kept.append(arg)
    return kept
