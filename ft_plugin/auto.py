"""`--method auto`: choose the delta method from monitored validation performance, then train it fully.

A successive-halving race (Jamieson & Talwalkar, 2016): every candidate method starts its full run (the full run's
learning-rate schedule, data order and seed) and stops after a small budget of optimizer steps, saving a checkpoint,
and is evaluated on the validation split; the best `1/eta` continue from their checkpoints to a budget `eta` times
larger, until one is left. The budgets count down from the *horizon*, the share of the full run at which the last
rung decides (as Hyperband's brackets count down from their largest budget): a method that learns fast early is
not chosen over one that overtakes it a little later (short-horizon bias), whatever the number of methods. The
winner's full run then resumes from its last race checkpoint, so no step is trained twice and the result is the
same as `--method <winner>` run alone. Each dropped method is logged with the reason. The race's flags
(`--auto_methods`, `--auto_horizon`, `--auto_eta`, `--auto_metric`) are read here and removed before the recipe
parses the rest; the race works in `<output_dir>/auto-race/` and records itself in `<output_dir>/auto_race.json`,
which a re-run of an interrupted job reuses instead of racing again.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import HfArgumentParser, TrainerCallback

from .errors import MethodError

if TYPE_CHECKING:
    from .data import TextClassificationData

logger = logging.getLogger("ft_plugin")

# Every registered method but two kinds (docs/selection.md, "The default candidates"). Methods that train BitFit's
# biases start fast and are overtaken: BitFit led a rung and ended 5 points down (tweets), lora+bitfit led at a
# third of the run and ended 2.5 points down (BBC headlines). Soft prompts (prompt, p_tuning, intrinsic_prompt) trail
# on models of this size (Lester et al. 2021: prompt tuning catches up near 10B parameters) and were the slowest
# per step on both datasets. More candidates that lose early make the race cheaper relative to the sweep.
DEFAULT_AUTO_METHODS = "full,freeze,lora,dora,adalora,ia3,prefix,adapter"
AUTO_METRICS = ("loss", "accuracy", "f1_macro")  # what the recipe's evaluation reports (ft_plugin.metrics)
TIED_EXAMPLES = 3  # before the last rung, accuracies at most this many validation examples apart tie (tie_margin)


class Share(float):
    """A share of the run, written as a decimal or a fraction on the command line (`0.4`, `1/3`)."""

    def __new__(cls, value: str | float = 0.0) -> Share:
        try:
            return super().__new__(cls, Fraction(value) if isinstance(value, str) else value)
        except ZeroDivisionError:
            raise ValueError(f"{value} divides by zero") from None  # argparse reports a ValueError in one line


@dataclass
class AutoArguments:
    """The race behind `--method auto`."""

    auto_methods: str = field(
        default=DEFAULT_AUTO_METHODS, metadata={"help": "Comma-separated methods that race for --method auto."}
    )
    auto_horizon: Share = field(
        default=Share(1 / 3),
        metadata={
            "help": "Share of the full run's optimizer steps (a decimal or a fraction: 0.4, 1/3) at which the race's "
            "last rung chooses the winner; each earlier rung is eta times shorter (default 1/3: with the 8 default "
            "methods and eta 3, rungs at 1/9 and 1/3 of the run)."
        },
    )
    auto_eta: int = field(
        default=3,
        metadata={"help": "Keep the best 1/eta of the methods at each rung (>= 2; default 3: 3 of the 8 defaults)."},
    )
    auto_metric: str = field(
        default="accuracy",
        metadata={
            "help": "Validation metric that ranks the methods at each rung: accuracy (default; ties go to the lower "
            "validation loss, and before the last rung accuracies at most 3 validation examples apart tie), loss or "
            "f1_macro. Loss favoured methods with the lower loss but not the higher accuracy (docs/selection.md, "
            "runs 19-21)."
        },
    )


@dataclass
class RaceResult:
    """What the race did: the winner, each rung's scores, and why each other method was dropped."""

    winner: str
    rungs: list[dict] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    checkpoint: str | None = None  # the winner's last race checkpoint: its full run resumes there


class StopAtStep(TrainerCallback):
    """Ends a race run at `step` with a checkpoint there, without the evaluation or save that the Trainer's epoch
    end would add (the full run would not have them mid-epoch)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = control.should_save = True

    def on_epoch_end(self, args, state, control, **kwargs):
        stopped_mid_epoch = state.global_step >= self.step and not float(state.epoch or 0).is_integer()
        if stopped_mid_epoch:
            control.should_evaluate = control.should_save = False


@contextmanager
def old_objects_frozen():
    """Exclude the objects that exist now (modules, the data) from garbage collection until the block ends.

    accelerate's `free_memory` runs a full `gc.collect()` at the start of every `Trainer.train()`: ~0.5 s on a
    2-core machine with torch and transformers imported, once per race run; frozen objects are not visited.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def requested_method(argv: list[str], method: str | None) -> str:
    """The method a recipe's argv asks for: `--method` wins over the recipe's own."""
    from .recipe import ModelArguments, has_flag

    if not has_flag(argv, "--method"):
        return method or ModelArguments.method
    parser = HfArgumentParser(ModelArguments, add_help=False)  # --help is the recipe's whole parser's
    chosen, _ = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    return chosen.method


def race(argv: list[str], auto: AutoArguments, folder: Path) -> tuple[RaceResult, TextClassificationData]:
    """Run the successive-halving race on the recipe flags `argv` (without the --auto_* flags) in `folder`.
    Returns the result and the data it loaded (the winner's full run trains on it)."""
    from .data import load_data
    from .recipe import build_trainer, last_checkpoint, load_base, parse_args, parse_checked_args, total_training_steps
    from .search import compatible_methods

    started = time.perf_counter()
    methods = [m.strip() for m in auto.auto_methods.split(",") if m.strip()]
    if not methods:
        raise MethodError("--auto_methods is empty: list the methods to race, e.g. lora,bitfit,adapter.")
    if auto.auto_eta < 2 or not 0 < auto.auto_horizon <= 1:
        raise MethodError("--auto_eta must be at least 2 and --auto_horizon in (0, 1]; defaults: 3 and 1/3.")
    if auto.auto_metric.removeprefix("eval_") not in AUTO_METRICS:
        raise MethodError(f"--auto_metric {auto.auto_metric} is not measured: choose from {', '.join(AUTO_METRICS)}.")
    for method in methods:  # unknown methods and bad flags fail here, in one line
        parse_checked_args([*argv, "--method", method], warn_unused_options=False)
    model_args, data_args, method_args, training_args = parse_args(
        [*argv, "--method", methods[0]], warn_unused_options=False
    )
    data = load_data(data_args)
    base, _ = load_base(model_args, data.labels)
    survivors, dropped = compatible_methods(methods, base, method_args)
    dropped = {m: f"cannot be applied to {base.name_or_path}: {reason}" for m, reason in dropped.items()}
    del base
    if not survivors:
        raise MethodError(f"None of --auto_methods {auto.auto_methods} applies to this model: choose other methods.")
    full_steps = total_training_steps(training_args, len(data.splits["train"]))
    rungs = rung_steps(full_steps, len(survivors), auto.auto_horizon, auto.auto_eta)
    result = RaceResult(winner=survivors[0], dropped=dropped)
    validation_size = len(data.splits["validation"])  # what each rung's evaluation scores
    metric = f"eval_{auto.auto_metric.removeprefix('eval_')}"
    higher_is_better = not metric.endswith("loss")
    with old_objects_frozen():  # each rung's train() starts with a full garbage collection
        for rung, steps in enumerate(rungs):
            scores, losses = {}, {}
            for method in survivors:
                race_argv = [
                    *argv, "--method", method, "--output_dir", str(folder / method.replace("+", "_")),
                    "--load_best_model_at_end", "false", "--report_to", "none", "--disable_tqdm", "true",
                ]  # fmt: skip
                trainer = build_trainer(
                    *parse_args(race_argv, warn_unused_options=False), callbacks=[StopAtStep(steps)], data=data
                )
                trainer.train(resume_from_checkpoint=last_checkpoint(trainer.args.output_dir))
                trainer.accelerator.wait_for_everyone()  # the checkpoint is written before anyone reads it
                metrics = trainer.evaluate()
                scores[method], losses[method] = metrics[metric], metrics["eval_loss"]
                logger.info("auto: rung %d, %s: %s %.4f after %d steps", rung, method, metric, scores[method], steps)
            last_rung = rung == len(rungs) - 1
            margin = tie_margin(metric, validation_size, last_rung)
            ranked = rank_methods(scores, losses, higher_is_better, margin)
            keep = kept_count(len(ranked), last_rung=last_rung, eta=auto.auto_eta)
            for method in ranked[keep:]:
                dropped[method] = f"rung {rung} ({steps} steps): " + drop_reason(
                    metric, method, ranked, keep, scores, losses, higher_is_better, margin
                )
                logger.info("auto: dropped %s: %s", method, dropped[method])
            result.rungs.append({"steps": steps, "metric": metric, "tie_margin": margin, "scores": scores, "eval_loss": losses, "kept": ranked[:keep]})  # fmt: skip
            survivors = ranked[:keep]
    result.winner = survivors[0]
    result.checkpoint = last_checkpoint(folder / result.winner.replace("+", "_"))
    result.seconds = round(time.perf_counter() - started, 2)
    logger.info("auto: chose %s after %d rung(s) in %.0fs", result.winner, len(result.rungs), result.seconds)
    return result, data


def tie_margin(metric: str, validation_size: int, last_rung: bool) -> float:
    """How far apart two methods' scores may be at a rung and still tie (the lower validation loss ranks first).

    Before the last rung, accuracies fewer than `TIED_EXAMPLES + 1` validation examples apart tie: no paired test
    tells two classifiers apart at 5 % on so few examples (McNemar: with `b` disagreements all one way, chi-squared
    is `b`, below 3.84 for b <= 3), and an early rung's job is to keep what learns, which the loss shows first (drug
    reviews, docs/selection.md run 20: a method one review of 60 behind, with the lowest loss, was dropped at the
    first rung). The last rung, which chooses, ranks by the metric itself; loss and F1 never tie within a margin."""
    if last_rung or metric.removeprefix("eval_") != "accuracy" or validation_size < 1:
        return 0.0
    return TIED_EXAMPLES / validation_size


def rank_methods(
    scores: dict[str, float], losses: dict[str, float], higher_is_better: bool, margin: float = 0.0
) -> list[str]:
    """Methods best first by `scores`: of those within `margin` of the best left, the lowest validation loss next."""
    sign = 1 if higher_is_better else -1
    left, ranked = dict(scores), []
    while left:
        best = max(sign * score for score in left.values())
        tied = [m for m in left if _ties(sign * left[m], best, margin)]
        ranked.append(min(tied, key=losses.__getitem__))  # the first of equal losses, as a stable sort would
        del left[ranked[-1]]
    return ranked


def _ties(score: float, best: float, margin: float) -> bool:
    """Whether `score` ties `best` (both signed so that higher is better): within `margin`, to float rounding."""
    return score >= best - margin - 1e-9


def drop_reason(
    metric: str,
    method: str,
    ranked: list[str],
    kept: int,
    scores: dict[str, float],
    losses: dict[str, float],
    higher_is_better: bool,
    margin: float = 0.0,
) -> str:
    """Why `method` ranked below the `kept` best of `ranked`: its score, or on a tie its validation loss."""
    sign = 1 if higher_is_better else -1
    score, loss, worst = scores[method], losses[method], ranked[kept - 1]
    best_left = max(sign * scores[m] for m in ranked[kept - 1 :])  # when the worst kept was chosen
    if _ties(sign * score, best_left, margin):
        loss_above = f"eval_loss {loss:.4f} above"
        if score == scores[worst]:
            return f"{metric} {score:.4f} tied with the worst of the {kept} kept, {loss_above} its {losses[worst]:.4f}"
        return (
            f"{metric} {score:.4f} within {TIED_EXAMPLES} validation examples of the best left "
            f"({sign * best_left:.4f}): tied, {loss_above} the worst kept's {losses[worst]:.4f}"
        )
    side = "below" if higher_is_better else "above"
    return f"{metric} {score:.4f} {side} the {kept} kept (worst kept {scores[worst]:.4f})"


def kept_count(methods: int, last_rung: bool, eta: int) -> int:
    """How many of `methods` a rung keeps: the best `1/eta` (at least one), and one at the last rung."""
    return 1 if last_rung else max(1, math.ceil(methods / eta))


def rung_steps(full_steps: int, methods: int, horizon: float, eta: int) -> list[int]:
    """Optimizer steps at which the race ranks the methods: the last at `horizon` of the full run, each earlier one
    `eta` times shorter, as many rungs as cutting `methods` to 1/eta takes to leave one (none for a single method)."""
    if methods < 2:
        return []
    last = max(1, round(full_steps * horizon))
    count = math.ceil(math.log(methods) / math.log(eta) - 1e-9)
    return sorted({max(1, round(last / eta**k)) for k in range(count)})


def resolve_auto(argv: list[str], method: str | None = None) -> tuple[list[str], TextClassificationData | None]:
    """Recipe flags -> the same flags with a concrete method, and the data the race loaded (None without a race).

    A run that does not ask for `auto` is returned as is; one that does runs the race (or reuses the one recorded
    in its output folder), writes `auto_race.json` there, and gets `--method <winner>` and, when the race left a
    checkpoint, `--resume_from_checkpoint` at it. The final run trains on the race's data (and its tokenisation
    cache) instead of loading it again."""
    if requested_method(argv, method) != "auto":
        return argv, None
    from accelerate import PartialState

    from .recipe import check_output_dir, has_flag, parse_checked_args

    parser = HfArgumentParser(AutoArguments, add_help=False)
    auto, rest = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    rest = _without_method(rest)
    if not has_flag(rest, "--output_dir"):
        rest += ["--output_dir", "outputs/auto"]
    model_args, _, _, training_args = parse_checked_args([*rest, "--method", "lora"], warn_unused_options=False)
    output_dir = Path(training_args.output_dir)
    # before the race, not after it: an existing result, an unwritable folder; a checkpoint of the final run
    resume = check_output_dir(training_args, model_args.overwrite_output_dir)
    record = output_dir / "auto_race.json"
    data = None
    if record.is_file() and not model_args.overwrite_output_dir:  # an interrupted auto run: same race, go on
        result = RaceResult(
            **{k: v for k, v in json.loads(record.read_text()).items() if k in RaceResult.__dataclass_fields__}
        )
        logger.info("auto: reusing the race recorded in %s: %s", record, result.winner)
    else:
        if PartialState().is_main_process:  # a race starts afresh: no stale checkpoint of an earlier one
            shutil.rmtree(output_dir / "auto-race", ignore_errors=True)
        PartialState().wait_for_everyone()
        result, data = race(rest, auto, output_dir / "auto-race")
        if PartialState().is_main_process:
            record.write_text(json.dumps({**asdict(auto), **asdict(result)}, indent=2))
            race_folder = output_dir / "auto-race"  # absent when no rung ran (a single method left)
            for loser in race_folder.iterdir() if race_folder.is_dir() else []:
                if loser.name != result.winner.replace("+", "_"):
                    shutil.rmtree(loser, ignore_errors=True)
        PartialState().wait_for_everyone()
    if resume is None and result.checkpoint and Path(result.checkpoint).is_dir():
        rest += ["--resume_from_checkpoint", result.checkpoint]
    return [*rest, "--method", result.winner], data


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
