"""Sweeps: an Optuna study over delta methods and their key hyper-parameters, with pruning.

The search is `Trainer.hyperparameter_search(backend="optuna")`: `hp_space` suggests the method, its options and the
learning rate / epochs, `model_init` builds the suggested method on a copy of the base model, and the Trainer reports
every evaluation to Optuna, whose pruner stops weak trials early. The study lives in a SQLite file in the output
folder, so an interrupted sweep resumes where it stopped. Outputs: `leaderboard.json`/`.csv`, `pareto.png`
(accuracy vs trainable parameters) and `best_recipe.yaml`, which `accelerate launch recipes/...` runs as is.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, set_seed

from .data import DataArguments
from .errors import FtPluginError, MethodError, first_line
from .memory import PeakRSS
from .methods import apply_method, count_parameters, parse_method

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_METHODS = "lora,bitfit,adapter,ia3,prefix,lora+bitfit"


# Per-method search spaces: name -> function(trial) -> {method flag: value}. Methods not listed have no options
# worth searching; every method also gets a learning rate around its default and the number of epochs.
def _lora_space(trial) -> dict[str, Any]:
    r = trial.suggest_categorical("lora_r", [4, 8, 16])
    return {"lora_r": r, "lora_alpha": r * trial.suggest_categorical("lora_alpha_ratio", [1, 2, 4])}


VIRTUAL_TOKEN_CHOICES = [5, 10, 20]


def _virtual_tokens_space(trial) -> dict[str, Any]:
    return {"num_virtual_tokens": trial.suggest_categorical("num_virtual_tokens", VIRTUAL_TOKEN_CHOICES)}


SEARCH_SPACES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "lora": _lora_space,
    "dora": _lora_space,
    "adapter": lambda trial: {
        "adapter_reduction_factor": trial.suggest_categorical("adapter_reduction_factor", [8, 16, 32, 64])
    },
    "freeze": lambda trial: {"freeze_trainable_layers": trial.suggest_int("freeze_trainable_layers", 1, 3)},
    "prefix": _virtual_tokens_space,
    "prompt": _virtual_tokens_space,
    "p_tuning": _virtual_tokens_space,
    "intrinsic_prompt": _virtual_tokens_space,
}
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "qmc": "QMCSampler"}
PRUNERS = {
    "hyperband": "HyperbandPruner",
    "median": "MedianPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "none": "NopPruner",
}


@dataclass
class SweepArguments:
    """What to search and how. The base model, data and training flags are the recipes' own."""

    methods: str = DEFAULT_METHODS
    n_trials: int = 12  # the study's total: a resumed sweep runs only the missing trials
    timeout: float | None = None  # minutes
    sampler: str = "tpe"
    pruner: str = "hyperband"
    study_name: str = "ft-plugin-sweep"
    evals_per_epoch: int = 4  # intermediate evaluations, the pruner's input
    seed: int = 42


def method_params(method: str, trial) -> dict[str, Any]:
    """The method options `trial` suggests for `method` (a combination gets each part's options)."""
    params: dict[str, Any] = {}
    for spec in parse_method(method):
        params.update(SEARCH_SPACES.get(spec.name, lambda trial: {})(trial))
    return params


def compatible_methods(methods: list[str], base_model, method_args) -> tuple[list[str], dict[str, str]]:
    """Keep the methods that apply to `base_model`; returns (kept, {dropped: reason})."""
    kept, dropped = [], {}
    for method in methods:
        try:
            apply_method(copy.deepcopy(base_model), method, method_args)
        except Exception as error:  # peft raises ValueError, KeyError, RuntimeError... for a model it cannot adapt
            dropped[method] = first_line(error)
            logger.warning("Dropping %s from the sweep: %s", method, dropped[method])
        else:
            kept.append(method)
    return kept, dropped


class TrialRecorder(TrainerCallback):
    """Stores each trial's macro-F1, trainable parameters, train time and peak memory as Optuna user attributes."""

    def __init__(self) -> None:
        self.trainer = None
        self.started = 0.0
        self.metrics: dict[str, float] = {}
        self.memory: PeakRSS | None = None  # CPU runs: this trial's peak resident memory

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        import torch

        self.started, self.metrics = time.perf_counter(), {}
        if self.memory is not None:  # a pruned trial ends inside `train()`, without on_train_end
            self.memory.stop()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        else:
            self.memory = PeakRSS().start()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.metrics = dict(metrics or {})

    def on_train_end(self, args, state, control, model=None, **kwargs):
        import torch

        peak = self.memory.stop() if self.memory is not None else None  # CPU: this trial's peak resident memory
        self.memory = None
        trial = getattr(self.trainer, "_trial", None)
        if trial is None or not hasattr(trial, "set_user_attr"):
            return
        trainable, total = count_parameters(model)
        if torch.cuda.is_available():
            peak = torch.cuda.max_memory_allocated() / 2**20
        attributes = {
            "accuracy": self.metrics.get("eval_accuracy"),
            "f1_macro": self.metrics.get("eval_f1_macro"),
            "trainable_params": trainable,
            "total_params": total,
            "train_seconds": round(time.perf_counter() - self.started, 2),
            "peak_memory_mb": round(peak, 1) if peak is not None else None,
            "steps": state.global_step,
        }
        for key, value in attributes.items():
            trial.set_user_attr(key, value)


def _optuna_component(module, registry: dict[str, str], name: str, what: str, **kwargs):
    if name not in registry:
        raise FtPluginError(f"Unknown {what} '{name}': choose from {', '.join(registry)}.")
    component = getattr(module, registry[name])
    return component(**kwargs) if kwargs else component()


def evaluation_interval(steps_per_epoch: int, evals_per_epoch: int) -> int:
    """Steps between a trial's evaluations: at most `evals_per_epoch` per epoch (floor division evaluated after
    every step when an epoch had fewer steps than twice that, e.g. 7 evaluations of 7 steps for 4 asked)."""
    return max(1, math.ceil(steps_per_epoch / max(1, evals_per_epoch)))


def run_sweep(sweep_args: SweepArguments, model_args, data_args, method_args, training_args) -> dict[str, Any]:
    """Run (or resume) the study and write the leaderboard, the Pareto plot and the best recipe.

    Returns `{"best": row, "rows": [...], "outputs": {name: path}}`.
    """
    from .data import load_data
    from .recipe import fitting_max_seq_length, load_base, train_class_weights, virtual_token_count, with_speedups
    from .trainer import classification_trainer

    try:
        import matplotlib  # noqa: F401  (the Pareto plot, at the end: fail before the trials, not after)
        import optuna
    except ImportError as error:
        raise FtPluginError(f"ft-plugin sweep needs {error.name}: pip install 'ft-plugin[search]'.") from None
    if sweep_args.n_trials < 1:
        raise FtPluginError(f"--n_trials must be at least 1, got {sweep_args.n_trials}.")
    if sweep_args.evals_per_epoch < 1:
        raise FtPluginError(f"--evals_per_epoch must be at least 1, got {sweep_args.evals_per_epoch}.")
    if sweep_args.timeout is not None and not sweep_args.timeout > 0:
        raise FtPluginError(f"--timeout is in minutes and must be positive, got {sweep_args.timeout}.")
    methods = [m.strip() for m in sweep_args.methods.split(",") if m.strip()]
    for method in methods:
        parse_method(method)  # unknown or incompatible combinations fail here, in one line
    if "adalora" in methods:  # its rank schedule is tied to one run's step count and needs its own callback
        raise MethodError("adalora cannot be swept: tune it with `ft-plugin train --method adalora` instead.")
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(output_dir / 'sweep.db').resolve()}"
    existing = _existing_study(sweep_args.study_name, storage)  # None for a new study
    finished = _finished_trials(existing)
    # a resumed or extended study draws new trials: the same seed would suggest the finished ones again
    seed = sweep_args.seed + finished
    sampler = _optuna_component(optuna.samplers, SAMPLERS, sweep_args.sampler, "sampler", seed=seed)
    pruner = _optuna_component(optuna.pruners, PRUNERS, sweep_args.pruner, "pruner")
    data = load_data(data_args)
    set_seed(training_args.seed)  # the new head, which every trial copies, as the best recipe's run will draw it
    base, tokenizer = load_base(model_args, data.labels)
    methods, dropped = compatible_methods(methods, base, method_args)
    if not methods:
        raise MethodError(
            f"No method of --methods {sweep_args.methods} can be applied to {base.name_or_path} "
            f"({'; '.join(f'{m}: {r}' for m, r in dropped.items())}): choose other methods."
        )
    _check_same_methods(existing, storage, methods)
    setting = study_setting(model_args, data_args)
    _check_same_setting(existing, storage, setting)
    prompted = any(virtual_token_count(method, method_args) for method in methods)
    virtual_tokens = max(method_args.num_virtual_tokens, *VIRTUAL_TOKEN_CHOICES) if prompted else 0  # any a trial draws
    tokenized = data.tokenize(
        tokenizer, fitting_max_seq_length(data_args.max_seq_length, base, tokenizer, virtual_tokens)
    )
    batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    steps_per_epoch = max(1, math.ceil(len(tokenized["train"]) / batch))
    max_epochs = max(1, math.ceil(training_args.num_train_epochs))
    training_args = replace(
        training_args,
        eval_strategy="steps",
        eval_steps=evaluation_interval(steps_per_epoch, sweep_args.evals_per_epoch),
        save_strategy="no",
        load_best_model_at_end=False,
        report_to="none",
    )

    def hp_space(trial) -> dict[str, Any]:
        """Suggest everything (so the sampler sees it); return the TrainingArguments part."""
        method = trial.suggest_categorical("method", methods)
        method_params(method, trial)
        default = min(spec.learning_rate for spec in parse_method(method))
        return {
            "learning_rate": trial.suggest_float("learning_rate", default / 4, default * 4, log=True),
            "num_train_epochs": trial.suggest_int("num_train_epochs", 1, max_epochs),
        }

    def model_init(trial=None):
        """The trial's method on a copy of the base model. The Trainer calls this before `hp_space`; Optuna returns
        the same value when a trial suggests a name twice, so both see the same method and options."""
        if trial is None:  # the Trainer's constructor builds one model before any trial
            method, options = methods[0], method_args
        else:
            method = trial.suggest_categorical("method", methods)
            options = replace(method_args, **method_params(method, trial))
        return with_speedups(apply_method(copy.deepcopy(base), method, options), model_args)

    recorder = TrialRecorder()
    weights = train_class_weights(model_args, data, tokenized)
    trainer = classification_trainer(training_args, tokenized, tokenizer, [recorder], weights, model_init=model_init)
    recorder.trainer = trainer
    remaining = sweep_args.n_trials - finished
    if remaining > 0:
        logger.info("Study %s: %d trials done, running %d more.", sweep_args.study_name, finished, remaining)
        study = optuna.create_study(
            study_name=sweep_args.study_name, storage=storage, direction="maximize", load_if_exists=True
        )  # the search loads it; created here first to record what its trials train on, before the first one runs
        study.set_user_attr(SETTING_ATTRIBUTE, setting)
        trainer.hyperparameter_search(
            hp_space=hp_space,
            compute_objective=lambda metrics: metrics["eval_accuracy"],
            n_trials=remaining,
            direction="maximize",
            backend="optuna",
            study_name=sweep_args.study_name,
            storage=storage,
            load_if_exists=True,
            sampler=sampler,
            pruner=pruner,
            timeout=sweep_args.timeout * 60 if sweep_args.timeout else None,
        )
    else:
        logger.info("Study %s already has %d finished trials: writing its outputs.", sweep_args.study_name, finished)
    study = optuna.load_study(study_name=sweep_args.study_name, storage=storage)
    rows = leaderboard_rows(study)
    if not any(row["state"] == "COMPLETE" for row in rows):
        raise FtPluginError("No trial completed (all pruned or failed): raise --n_trials or --timeout.")
    best = next(row for row in rows if row["state"] == "COMPLETE")
    outputs = {
        "leaderboard_json": write_leaderboard(rows, output_dir),
        "leaderboard_csv": str(output_dir / "leaderboard.csv"),
        "pareto_png": plot_pareto(rows, output_dir / "pareto.png"),
        "best_recipe": write_best_recipe(best, model_args, data_args, method_args, training_args, output_dir),
        "storage": storage,
    }
    return {"best": best, "rows": rows, "dropped_methods": dropped, "outputs": outputs}


def _check_same_methods(study, storage: str, methods: list[str]) -> None:
    """An existing study goes on only with the methods it was started with: Optuna fixes a categorical parameter's
    choices for the life of a study (its error came from inside the first new trial)."""
    trials = study.trials if study is not None else []
    choices = next((list(t.distributions["method"].choices) for t in trials if "method" in t.distributions), None)
    if choices is not None and choices != methods:
        raise MethodError(
            f"Study '{study.study_name}' in '{storage.removeprefix('sqlite:///')}' searches the methods {','.join(choices)}, "
            f"not {','.join(methods)}: Optuna cannot change a study's choices. Pass --methods {','.join(choices)} to go "
            "on with it, or a new --study_name (or --output_dir) for the new set."
        )


SETTING_ATTRIBUTE = "ft_plugin_setting"  # the study's user attribute: the base model and data its trials train on
SETTING_EXCLUDED = ("test_file", "max_predict_samples")  # the test split: not what the trials are scored on


def study_setting(model_args, data_args) -> dict[str, Any]:
    """The flags every trial of a study must share to be compared: the base model and the training and validation
    data (`DataArguments` but the test split's)."""
    data = {key: value for key, value in asdict(data_args).items() if key not in SETTING_EXCLUDED}
    return {"model_name_or_path": model_args.model_name_or_path, **data}


def _check_same_setting(study, storage: str, setting: dict[str, Any]) -> None:
    """An existing study goes on only on the model and data its trials trained on: a resume with others ranked
    trials of different models and data together, and the best recipe did not reproduce its trial."""
    recorded = study.user_attrs.get(SETTING_ATTRIBUTE) if study is not None else None
    if not recorded:  # a new study, or one of an earlier ft-plugin that recorded nothing
        return
    changed = [key for key in setting if recorded.get(key) != setting[key]]
    if changed:
        was = " ".join(f"--{key} {recorded.get(key)}" for key in changed)
        raise MethodError(
            f"Study '{study.study_name}' in '{storage.removeprefix('sqlite:///')}' was run with {was}, and its trials "
            "would not compare with these: pass the same flags to go on with it, or a new --study_name (or "
            "--output_dir)."
        )


def _finished_trials(study) -> int:
    import optuna

    if study is None:
        return 0
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _existing_study(study_name: str, storage: str):
    """The Optuna study of that name in `storage`, or None when there is none yet."""
    import optuna

    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no such study yet
        return None


def leaderboard_rows(study) -> list[dict[str, Any]]:
    """Completed trials best first, then pruned ones (by their last reported accuracy)."""
    import optuna

    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
            continue
        params = method_params(trial.params["method"], optuna.trial.FixedTrial(trial.params))
        attrs = trial.user_attrs
        accuracy = trial.value if trial.value is not None else attrs.get("accuracy")
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "method": trial.params["method"],
                "learning_rate": trial.params["learning_rate"],
                "num_train_epochs": trial.params["num_train_epochs"],
                "hparams": json.dumps(params, sort_keys=True),
                "accuracy": accuracy,
                "f1_macro": attrs.get("f1_macro"),
                "trainable_params": attrs.get("trainable_params"),
                "train_seconds": attrs.get("train_seconds"),
                "peak_memory_mb": attrs.get("peak_memory_mb"),
                "steps": attrs.get("steps"),
            }
        )
    rows.sort(key=lambda row: (row["state"] != "COMPLETE", -(row["accuracy"] or 0.0)))
    return rows


def write_leaderboard(rows: list[dict[str, Any]], output_dir: Path) -> str:
    """`leaderboard.json` and `leaderboard.csv` in `output_dir`; returns the JSON path."""
    (output_dir / "leaderboard.json").write_text(json.dumps(rows, indent=2))
    with open(output_dir / "leaderboard.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(output_dir / "leaderboard.json")


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Completed trials no other completed trial beats on both accuracy (higher) and trainable params (fewer)."""
    done = [r for r in rows if r["state"] == "COMPLETE" and r["trainable_params"] is not None]
    return sorted(
        (
            r
            for r in done
            if not any(
                o["accuracy"] >= r["accuracy"]
                and o["trainable_params"] <= r["trainable_params"]
                and (o["accuracy"] > r["accuracy"] or o["trainable_params"] < r["trainable_params"])
                for o in done
            )
        ),
        key=lambda r: r["trainable_params"],
    )


def plot_pareto(rows: list[dict[str, Any]], path: Path) -> str:
    """Accuracy vs trainable parameters, one colour per method, pruned trials hollow, the front as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    methods = sorted({row["method"] for row in rows})
    colours = dict(zip(methods, plt.cm.tab10.colors))
    for method in methods:
        for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
            points = [r for r in rows if r["method"] == method and r["state"] == state and r["trainable_params"]]
            if points:
                axes.scatter(
                    [r["trainable_params"] for r in points], [r["accuracy"] for r in points], marker=marker,
                    color=colours[method], label=f"{method}{' (pruned)' if state == 'PRUNED' else ''}",
                )  # fmt: skip
    front = pareto_front(rows)
    axes.step([r["trainable_params"] for r in front], [r["accuracy"] for r in front], "k--", where="post", lw=1)
    axes.set_xscale("log")
    axes.set_xlabel("trainable parameters")
    axes.set_ylabel("validation accuracy")
    axes.set_title("Sweep: accuracy vs trainable parameters (dashed: Pareto front)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return str(path)


# Flags copied from the sweep's own run into the best recipe, when they differ from their defaults.
RECIPE_DATA_AND_MODEL_FLAGS = (
    "model_name_or_path", "trust_remote_code", "allow_pickle", "load_in_4bit", "attention_dropout", "cpu_dropout",
    "fused_lora", "class_weights",
    *(f.name for f in fields(DataArguments)),
)  # fmt: skip
RECIPE_TRAINING_FLAGS = (
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "weight_decay",
    "warmup_steps", "max_steps", "seed", "bf16", "fp16",
)  # fmt: skip


def write_best_recipe(best, model_args, data_args, method_args, training_args, output_dir: Path) -> str:
    """`best_recipe.yaml`: the best trial's method, options, learning rate and epochs, plus the sweep's model, data
    and batch flags, as a config file that the method's recipe runs as is."""
    import yaml

    from .recipe import RECIPE_DEFAULTS, ModelArguments

    method = best["method"]
    values: dict[str, Any] = {"method": method}
    for source, default in ((model_args, ModelArguments()), (data_args, DataArguments())):
        for name in RECIPE_DATA_AND_MODEL_FLAGS:
            if hasattr(source, name) and getattr(source, name) != getattr(default, name):
                values[name] = getattr(source, name)
    chosen = json.loads(best["hparams"])
    for spec in parse_method(method):
        for option in fields(spec.config_cls):
            value = chosen.get(option.name, getattr(method_args, option.name))
            if value is not None and option.name != "adalora_total_step":  # AdaLoRA's is computed from the data
                values[option.name] = value
    values.update(learning_rate=best["learning_rate"], num_train_epochs=best["num_train_epochs"])
    reference = type(training_args)(output_dir="unused")
    for name in RECIPE_TRAINING_FLAGS:  # against the recipe's defaults (batch 32), not TrainingArguments' (8)
        if getattr(training_args, name) != RECIPE_DEFAULTS.get(name, getattr(reference, name)):
            values[name] = getattr(training_args, name)
    values["output_dir"] = f"outputs/best_{method.replace('+', '_')}"
    recipe = ROOT / "recipes" / f"{method.replace('+', '_')}_bert.py"
    recipe_name = f"recipes/{recipe.name}" if recipe.is_file() else "recipes/lora_bert.py"
    header = (
        f"# Best trial ({best['trial']}) of an ft-plugin sweep: validation accuracy {best['accuracy']:.4f}, "
        f"{best['trainable_params']:,} trainable parameters.\n"
        f"#   accelerate launch --config_file accelerate_configs/cpu.yaml {recipe_name} {output_dir}/best_recipe.yaml\n"
        "# The file's `method` wins over the recipe's own; flags given after the file override it.\n"
    )
    path = output_dir / "best_recipe.yaml"
    path.write_text(header + yaml.safe_dump(values, sort_keys=False))
    return str(path)


# ------------------------------------------------------------------------------------------------------------ CLI
# Recipe flags `ft-plugin sweep` forwards as they are (any other recipe flag: put it in a YAML config file).
FORWARDED_FLAGS = (
    "model_name_or_path", "dataset_name", "train_file", "validation_file", "test_file", "text_column",
    "label_column", "max_train_samples", "max_eval_samples", "max_seq_length", "num_train_epochs",
    "per_device_train_batch_size", "target_modules", "class_weights", "attention_dropout", "cpu_dropout", "output_dir",
)  # fmt: skip


def add_sweep_arguments(parser) -> None:
    """`ft-plugin sweep` flags: the search's own, plus the common recipe flags and an optional recipe config file."""
    defaults = SweepArguments()
    parser.add_argument("config", nargs="?", help="A recipe YAML/JSON config (model, data, training flags).")
    parser.add_argument("--methods", default=defaults.methods, help=f"Comma-separated (default {DEFAULT_METHODS}).")
    parser.add_argument("--n_trials", type=int, default=defaults.n_trials, help="Total trials of the study.")
    parser.add_argument("--timeout", type=float, default=None, help="Stop starting trials after this many minutes.")
    parser.add_argument("--sampler", default=defaults.sampler, choices=list(SAMPLERS))
    parser.add_argument("--pruner", default=defaults.pruner, choices=list(PRUNERS))
    parser.add_argument("--study_name", default=defaults.study_name, help="Same name + output_dir: resume it.")
    parser.add_argument("--evals_per_epoch", type=int, default=defaults.evals_per_epoch)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    for flag in FORWARDED_FLAGS:
        parser.add_argument(f"--{flag}", nargs="+" if flag == "target_modules" else None, default=None)
    parser.set_defaults(output_dir="outputs/sweep")


def recipe_argv(args, flags: tuple[str, ...]) -> list[str]:
    """The forwarded flags that were given, as recipe command-line arguments (after the config file, if any)."""
    argv = [args.config] if getattr(args, "config", None) else []
    for flag in flags:
        value = getattr(args, flag)
        if value is not None:
            argv += [f"--{flag}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return argv


def sweep_command(args) -> int:
    """`ft-plugin sweep`: run or resume the study, print the leaderboard and where the outputs are."""
    from .recipe import parse_checked_args

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    sweep_args = SweepArguments(
        **{f.name: getattr(args, f.name) for f in fields(SweepArguments) if hasattr(args, f.name)}
    )
    argv = recipe_argv(args, FORWARDED_FLAGS)
    model_args, data_args, method_args, training_args = parse_checked_args(
        argv, method="lora", warn_unused_options=False
    )
    try:
        result = run_sweep(sweep_args, model_args, data_args, method_args, training_args)
    except KeyboardInterrupt:  # Ctrl-C: the finished trials are in the study's SQLite file
        database = Path(training_args.output_dir) / "sweep.db"
        print(
            f"\nft-plugin: interrupted. Finished trials are kept in {database}: run the same command to resume.",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    columns = ("trial", "state", "method", "accuracy", "f1_macro", "trainable_params", "train_seconds", "peak_memory_mb",
               "hparams")  # fmt: skip
    table = [columns] + [tuple(_cell(row[c]) for c in columns) for row in result["rows"]]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)))
    print(json.dumps(result["outputs"], indent=2))
    return 0


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)
