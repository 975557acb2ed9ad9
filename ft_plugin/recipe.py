"""Arguments and `build_trainer`: a base model + a labelled text dataset + a method -> a `transformers.Trainer`.

The same code runs on CPU, one GPU or many: the launcher (`python`, `accelerate launch`, `torchrun`) picks the
hardware through `TrainingArguments`, as in accelerate's examples. `main()` is what every recipe runs.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
import transformers
from transformers import (
    EarlyStoppingCallback,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from .allocator import allocator_in_use
from .attention import use_fast_attention_dropout
from .card import hardware, hyperparameters, render_card
from .data import DataArguments, TextClassificationData, load_data
from .distributed import check_batches, check_launch, is_main_process
from .dropout import use_fast_dropout
from .errors import CheckpointWriteError, FtPluginError, MethodError, first_line
from .hub import push_after_training
from .methods import METHODS, apply_method, count_parameters, parse_method, trainable_report
from .methods.compose import configs_from_arguments
from .methods.fused_lora import fuse_lora_layers
from .models import load_base_model
from .saving import save_result
from .trainer import class_weights_for, classification_trainer, parse_class_weights

logger = logging.getLogger("ft_plugin")


@dataclass
class ModelArguments:
    """The base model and the delta method.

    Args:
        model_name_or_path: default: the embedded `sentence-transformers/all-MiniLM-L6-v2`; also a short name
            (`minilm-l6`, `bert-tiny`), a local folder or a Hub id.
        method: a registered method or a `+`-combination (`ft-plugin methods` lists them).
    """

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Base model: Hub id, local folder or short name; default: embedded MiniLM-L6."}
    )
    method: str = field(default="lora", metadata={"help": f"Delta method: {', '.join(METHODS)}, a+b, or auto."})
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without improvement."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the Hub (off)."})
    allow_pickle: bool = field(
        default=False,
        metadata={"help": "Also load pickled .bin base weights (they can run code: only for sources you trust)."},
    )
    load_in_4bit: bool = field(
        default=False, metadata={"help": "QLoRA-style 4-bit NF4 base (GPU + `pip install 'ft-plugin[qlora]'`)."}
    )
    attention_dropout: float | None = field(
        default=None,
        metadata={
            "help": "Dropout on attention probabilities (default: the model's config); 0 trains faster and "
            "lighter on CPU."
        },
    )
    cpu_dropout: str = field(
        default="fast",
        metadata={
            "help": "How dropout masks are drawn when training on the CPU: fast (16-bit random numbers, four per "
            "64-bit draw, for the hidden, the method's and the attention-probability dropouts: faster steps, less "
            "memory) or torch (torch's own bernoulli_ masks and SDPA's math path). No effect on GPUs.",
            "choices": ["fast", "torch"],
        },
    )
    fused_lora: bool = field(
        default=True,
        metadata={
            "help": "Compute each LoRA layer as one autograd function (update and input gradient added in place; "
            "with LoRA dropout or several adapters: the update inside one addmm) instead of PEFT's matmul, multiply "
            "and add: the same results, faster steps. false: PEFT's own forward."
        },
    )
    class_weights: str | None = field(
        default=None,
        metadata={
            "help": "Weight the loss per class for imbalanced data: balanced (n / (classes x count), as "
            "scikit-learn), or label=weight pairs, e.g. negative=1,positive=3 (labels not named: 1)."
        },
    )
    # -- reliability (issue 9): transformers 5's TrainingArguments has no such flag; run_glue's meaning
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace a result already in --output_dir and ignore its checkpoints (else: refuse/resume)."},
    )


def load_base(model_args: ModelArguments, labels: list[str]):
    """`(model, tokenizer)` for the recipe's base model flags, with a new `labels`-sized head."""
    return load_base_model(
        model_args.model_name_or_path,
        labels,
        trust_remote_code=model_args.trust_remote_code,
        load_in_4bit=model_args.load_in_4bit,
        allow_pickle=model_args.allow_pickle,
        attention_dropout=model_args.attention_dropout,
    )


def _method_arguments_class() -> type:
    """One dataclass holding every registered method's options (their fields are the CLI flags)."""
    seen: dict[str, Any] = {}
    for spec in METHODS.values():
        for f in fields(spec.config_cls):
            seen.setdefault(f.name, (f.name, f.type, field(default=f.default, metadata=f.metadata)))
    return make_dataclass("MethodArguments", list(seen.values()))


MethodArguments = _method_arguments_class()

# Defaults that differ from TrainingArguments': evaluate and keep the best epoch, quiet logging.
RECIPE_DEFAULTS: dict[str, Any] = {
    "num_train_epochs": 3.0,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "logging_strategy": "steps",
    "logging_steps": 10,
    "load_best_model_at_end": True,
    "metric_for_best_model": "accuracy",
    "save_total_limit": 1,
    "report_to": "none",
    "train_sampling_strategy": "group_by_length",
    "dataloader_pin_memory": torch.cuda.is_available(),  # pinning only helps host-to-GPU copies
}


def _config_file_to_argv(path: str) -> list[str]:
    """A YAML/JSON config (`key: value` per flag) as command-line arguments, so flags after it override it."""
    import yaml

    if not Path(path).is_file():
        raise FtPluginError(f"Config file '{path}' does not exist: check the path (flags can follow it or replace it).")
    try:
        text = Path(path).read_text()
        values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError, OSError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise FtPluginError(
            f"Config file '{path}' could not be read ({_parse_problem(error)}): fix its syntax, one `flag_name: "
            "value` per line."
        ) from None
    if not isinstance(values, dict):
        raise FtPluginError(f"Config file '{path}' must hold a mapping of flag names to values.")
    argv = []
    for key, value in values.items():
        if isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        elif value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def _parse_problem(error: Exception) -> str:
    """What a YAML or JSON parser found wrong, and where, on one line."""
    mark = getattr(error, "problem_mark", None)  # yaml.MarkedYAMLError
    if mark is not None:
        return f"{error.problem} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno}, column {error.colno}"
    return first_line(error)


def expand_config_file(argv: list[str]) -> list[str]:
    """A YAML/JSON config file given first is replaced by its flags (flags after it override them)."""
    if argv and argv[0].endswith((".yaml", ".yml", ".json")) and not argv[0].startswith("-"):
        return _config_file_to_argv(argv[0]) + argv[1:]
    return argv


def check_training_budget(training_args: TrainingArguments) -> None:
    """One-line errors for batch and budget flags that would otherwise fail deep in the Trainer or train nothing."""
    for flag in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(training_args, flag) < 1:
            raise FtPluginError(f"--{flag} must be at least 1, got {getattr(training_args, flag)}.")
    if training_args.max_steps <= 0 and training_args.num_train_epochs <= 0:
        raise FtPluginError(
            f"--num_train_epochs {training_args.num_train_epochs} trains nothing: give a positive number of epochs "
            "(or --max_steps); to evaluate a result, use ft-plugin evaluate."
        )


MEASURED_METRICS = ("accuracy", "f1_macro", "loss")  # what every evaluation reports (metrics.compute_metrics)


def check_selection_and_reporting(model_args: ModelArguments, training_args: TrainingArguments) -> None:
    """One-line errors, before data and model load, for flags the Trainer refuses only when it starts (loggers) or
    at the first evaluation, an epoch in (the metric that picks the best checkpoint)."""
    from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    metric = training_args.metric_for_best_model
    if metric and metric.removeprefix("eval_") not in MEASURED_METRICS:
        raise FtPluginError(
            f"--metric_for_best_model {metric} is not measured: choose one of {', '.join(MEASURED_METRICS)}."
        )
    patience = model_args.early_stopping_patience
    if patience is not None and patience < 0:
        raise FtPluginError(f"--early_stopping_patience must be a number of evaluations (1 or more), got {patience}.")
    if patience and training_args.eval_strategy == "no":
        raise FtPluginError(
            "--early_stopping_patience needs evaluations to compare: drop --eval_strategy no (or the patience)."
        )
    reporters = [training_args.report_to] if isinstance(training_args.report_to, str) else training_args.report_to
    for name in [r for r in reporters or [] if r not in ("none", "all")]:
        if name not in INTEGRATION_TO_CALLBACK:
            raise FtPluginError(f"--report_to {name} is unknown: choose from {', '.join(INTEGRATION_TO_CALLBACK)}.")
        if name not in get_available_reporting_integrations():
            raise FtPluginError(f"--report_to {name} needs the {name} package: install it, or drop --report_to.")


def warn_unused_method_options(argv: list[str], method: str) -> None:
    """A warning for each method option on the command line that no method of `method` takes (`--lora_r` with
    `--method ia3`): it changes nothing, which the user would otherwise not learn. Not an error: one config file may
    serve several methods."""
    if method == "auto":  # the race's candidates take the options (auto.py)
        return
    chosen = {f.name for spec in parse_method(method) for f in fields(spec.config_cls)}
    takers: dict[str, list[str]] = {}
    for spec in METHODS.values():
        for option in fields(spec.config_cls):
            takers.setdefault(option.name, []).append(spec.name)
    given = {arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--")}
    for option in sorted(given & takers.keys() - chosen):
        logger.warning("--%s applies to %s, not %s: ignored.", option, ", ".join(takers[option]), method)


def has_flag(argv: list[str], flag: str) -> bool:
    """Whether `argv` gives `flag`, as `--flag value` or `--flag=value`."""
    return any(arg == flag or arg.startswith(f"{flag}=") for arg in argv)


def checkpointing_defaults(argv: list[str]) -> dict[str, Any]:
    """RECIPE_DEFAULTS' evaluation, checkpointing and load-best settings, following what `argv` sets itself.

    The recipe evaluates and saves every epoch and keeps the best epoch; a user who changes one strategy
    (`--eval_strategy steps --eval_steps 50`) gets the other one to match, and load-best only where there is
    something to compare (not with run_glue's `--eval_strategy no`, nor `--save_strategy no`), as the Trainer
    requires, instead of a refusal. Flags the user gives are never changed."""
    import argparse

    given = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    given.error = _raise_argument_error  # a library call must not exit the process
    names = ("eval_strategy", "save_strategy", "eval_steps", "save_steps", "logging_steps", "load_best_model_at_end")
    for name in names:  # nargs="?": a bare boolean flag is valid; the full parser checks every value
        given.add_argument(f"--{name}", f"--{name.replace('_', '-')}", default=None, nargs="?", const="true")
    flags, _ = given.parse_known_args(argv)
    evaluation_steps = flags.eval_steps or flags.logging_steps or RECIPE_DEFAULTS["logging_steps"]  # the Trainer's rule
    defaults: dict[str, Any] = {}
    if flags.eval_strategy not in (None, "no") and flags.save_strategy is None:  # save where it evaluates
        defaults["save_strategy"] = flags.eval_strategy
        if flags.eval_strategy == "steps" and flags.save_steps is None:
            defaults["save_steps"] = float(evaluation_steps)
    elif flags.save_strategy not in (None, "no", "best") and flags.eval_strategy is None:  # evaluate where it saves
        defaults["eval_strategy"] = flags.save_strategy
        if flags.save_strategy == "steps" and flags.eval_steps is None and flags.save_steps is not None:
            defaults["eval_steps"] = float(flags.save_steps)
        elif flags.save_strategy == "steps" and flags.save_steps is None:
            defaults["save_steps"] = float(evaluation_steps)
    strategies = {
        flags.eval_strategy or defaults.get("eval_strategy", RECIPE_DEFAULTS["eval_strategy"]),
        flags.save_strategy or defaults.get("save_strategy", RECIPE_DEFAULTS["save_strategy"]),
    }
    if "no" in strategies and flags.load_best_model_at_end is None:  # nothing evaluated or nothing saved to keep
        defaults["load_best_model_at_end"] = False
    return defaults


def _raise_argument_error(message: str) -> NoReturn:
    """argparse's `error` for the recipe parsers: ft-plugin's one-line error (printed by every command, reported by a
    job or the Space) instead of printing usage and exiting, e.g. for `--lora_r abc`."""
    raise MethodError(f"Invalid arguments: {message} (see --help).")


def parse_args(argv: list[str] | None = None, method: str | None = None, warn_unused_options: bool = True):
    """Parse run_glue-style flags (or a YAML/JSON config file first) into the four argument dataclasses.

    The method's default learning rate applies unless `--learning_rate` is given; recipes pass `method`.
    """
    argv = expand_config_file(list(sys.argv[1:] if argv is None else argv))
    # --- hub (issue 4): TrainingArguments' `hub_private_repo` is `bool | None`, which argparse makes take a value;
    # a bare `--hub_private_repo` (as users write `--push_to_hub`) means true.
    if "--hub_private_repo" in argv:
        i = argv.index("--hub_private_repo")
        if i + 1 == len(argv) or argv[i + 1].startswith("--"):
            argv.insert(i + 1, "true")
    # --- end hub
    dataclass_types: tuple = (ModelArguments, DataArguments, MethodArguments, TrainingArguments)
    if {"-h", "--help"} & set(argv):  # --help lists `--method auto`'s race flags too (auto.py parses them)
        from .auto import AutoArguments

        dataclass_types += (AutoArguments,)
    parser = HfArgumentParser(dataclass_types)
    pre_parser = HfArgumentParser(ModelArguments, add_help=False)  # --help is for the full parser below
    parser.error = pre_parser.error = _raise_argument_error  # a library call must not exit the process
    chosen, _ = pre_parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    method = chosen.method if has_flag(argv, "--method") or method is None else method
    specs = parse_method(method)
    if warn_unused_options:  # sweeps and `--method auto` parse one method's flags for many
        warn_unused_method_options(argv, method)
    parser.set_defaults(
        **{**RECIPE_DEFAULTS, **checkpointing_defaults(argv)},
        method=method,
        learning_rate=min(spec.learning_rate for spec in specs),
        output_dir=os.path.join("outputs", method.replace("+", "_")),
    )
    model_args, data_args, method_args, training_args = parser.parse_args_into_dataclasses(argv)
    if training_args.learning_rate <= 0:
        raise MethodError(f"--learning_rate must be positive, got {training_args.learning_rate}.")
    check_training_budget(training_args)
    check_selection_and_reporting(model_args, training_args)
    if {"--do_eval", "--do_predict"} & set(argv) and "--do_train" not in argv:
        raise FtPluginError(
            "A recipe always trains, then evaluates and tests (run_glue's --do_train --do_eval --do_predict): to "
            "evaluate or predict with an existing result, use ft-plugin evaluate/predict --adapter DIR."
        )
    if model_args.attention_dropout is not None and not 0 <= model_args.attention_dropout < 1:
        raise FtPluginError(f"--attention_dropout must be in [0, 1), got {model_args.attention_dropout}.")
    parse_class_weights(model_args.class_weights)  # a malformed value fails now; label names are checked on the data
    configs_from_arguments(specs, method_args)  # bad method options (--lora_r 0) fail now, before data and model load
    return model_args, data_args, method_args, training_args


class AdaLoraCallback(TrainerCallback):
    """AdaLoRA reallocates ranks after each optimizer step, before gradients are zeroed (peft's contract)."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        peft_model = getattr(model, "module", model)
        peft_model.base_model.update_and_allocate(state.global_step)


def total_training_steps(training_args: TrainingArguments, train_size: int) -> int:
    """The optimizer steps the Trainer will take (needed by AdaLoRA's schedule)."""
    if training_args.max_steps > 0:
        return training_args.max_steps
    per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    per_step *= max(1, training_args.world_size)
    return max(1, math.ceil(train_size / per_step) * math.ceil(training_args.num_train_epochs))


def train_class_weights(model_args: ModelArguments, data: TextClassificationData, tokenized) -> torch.Tensor | None:
    """The loss weights `--class_weights` asks for, from the training split's label counts (logged), or None."""
    weights = class_weights_for(model_args.class_weights, data.labels, tokenized["train"]["labels"][:])
    if weights is not None:
        named = (f"{label} {weight:.3g}" for label, weight in zip(data.labels, weights.tolist()))
        logger.info("Class weights: %s", ", ".join(named))
    return weights


def fitting_max_seq_length(max_seq_length: int, model, tokenizer, virtual_tokens: int = 0) -> int:
    """`--max_seq_length`, lowered (with a warning, as run_glue does) to what the model's positions allow, less the
    positions a prompt method's virtual tokens take before the text (prefix tuning's shift the position ids)."""
    positions = getattr(model.config, "max_position_embeddings", None)
    limits = [
        positions - virtual_tokens if isinstance(positions, int) else None,
        getattr(tokenizer, "model_max_length", None),
    ]
    limit = min((n for n in limits if isinstance(n, int) and 0 < n < 1_000_000), default=None)
    if limit is not None and max_seq_length > limit:
        logger.warning(
            "--max_seq_length %d is larger than the model's maximum length (%d%s): using %d.",
            max_seq_length,
            limit,
            f", after {virtual_tokens} positions for the virtual tokens" if virtual_tokens else "",
            limit,
        )
        return limit
    return max_seq_length


def virtual_token_count(method: str, method_args: Any) -> int:
    """Positions that `method`'s virtual tokens take in front of each text: `--num_virtual_tokens` for the prompt
    methods (alone or in a combination), else 0."""
    prompted = any(spec.family == "prompt" for spec in parse_method(method))
    return getattr(method_args, "num_virtual_tokens", 0) if prompted else 0


def with_speedups(model, model_args: ModelArguments):
    """The model with the recipe's speed flags applied; what it computes and saves does not change.
    `--cpu_dropout fast`: ft-plugin's masks for the hidden, the method's and the attention-probability dropouts
    (each uses torch's own dropout off the CPU). `--fused_lora true`: LoRA layers fused (`methods/fused_lora.py`)."""
    if model_args.cpu_dropout == "fast":
        use_fast_dropout(model)
        use_fast_attention_dropout(model)
    if model_args.fused_lora:
        fuse_lora_layers(model)
    return model


def build_trainer(
    model_args: ModelArguments,
    data_args: DataArguments,
    method_args: Any,
    training_args: TrainingArguments,
    callbacks: list[TrainerCallback] | None = None,
    data: TextClassificationData | None = None,
) -> Trainer:
    """A ready `transformers.Trainer` for the method on the data; subclass it or pass callbacks as usual.

    The trainer carries `ft_data` (the splits and labels) and the tokenizer as `processing_class`.
    """
    if training_args.push_to_hub:  # hub (issue 4)
        from .hub import check_push_before_training

        check_push_before_training(model_args.method, model_args.model_name_or_path, training_args)
    with training_args.main_process_first(desc="loading data"):
        data = data or load_data(data_args)
    set_seed(training_args.seed)  # before the new head and the delta weights are initialised (as run_glue does)
    model, tokenizer = load_base(model_args, data.labels)
    virtual_tokens = virtual_token_count(model_args.method, method_args)
    max_seq_length = fitting_max_seq_length(data_args.max_seq_length, model, tokenizer, virtual_tokens)
    with training_args.main_process_first(desc="tokenizing"):
        tokenized = data.tokenize(tokenizer, max_seq_length)
    check_batches(len(tokenized["train"]), training_args.per_device_train_batch_size, training_args.world_size)
    adalora = "adalora" in model_args.method.split("+")
    if adalora:
        method_args.adalora_total_step = total_training_steps(training_args, len(tokenized["train"]))
    model = with_speedups(apply_method(model, model_args.method, method_args), model_args)
    logger.info("%s: %s", model_args.method, trainable_report(model))
    # --- hub (issue 4): ft-plugin pushes the saved result folder itself, at the end of `train_and_save`, so the
    # Trainer must not create the repo at init nor push checkpoints: an offline run still trains and saves.
    # Reliability (issue 9): the Trainer pickles its arguments into every checkpoint's `training_args.bin`, so it
    # gets them without `--hub_token` (kept on the trainer, in memory, for that final push only).
    trainer_args = copy.copy(training_args)
    trainer_args.push_to_hub, trainer_args.hub_token = False, None
    # --- end hub
    callbacks = list(callbacks or [])
    if model_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=model_args.early_stopping_patience))
    if adalora:
        callbacks.append(AdaLoraCallback())
    class_weights = train_class_weights(model_args, data, tokenized)
    trainer = classification_trainer(trainer_args, tokenized, tokenizer, callbacks, class_weights, model=model)
    trainer.ft_class_weights = class_weights
    trainer.ft_data = data
    trainer.ft_data_arguments = {  # in the record, with absolute file paths: `ft-plugin evaluate` from any folder
        f.name: os.path.abspath(value) if f.name.endswith("_file") and value else value
        for f in fields(data_args)
        for value in [getattr(data_args, f.name)]
    }
    trainer.ft_test_dataset = tokenized["test"]
    trainer.ft_max_seq_length = max_seq_length
    trainer.ft_push_to_hub = training_args.push_to_hub  # hub (issue 4)
    trainer.ft_hub_token = training_args.hub_token
    return trainer


def train_and_save(trainer: Trainer, resume_from_checkpoint: str | bool | None = None) -> dict[str, float]:
    """Train, evaluate on validation and test, save the result folder (main process only). Returns metrics."""
    args = trainer.args
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    train_metrics = dict(result.metrics)
    trainable, total = count_parameters(trainer.model)
    train_metrics.update(trainable_params=trainable, total_params=total, train_samples=len(trainer.train_dataset))
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    eval_metrics = {**trainer.evaluate(), "eval_samples": len(trainer.eval_dataset)}  # run_glue's *_samples
    trainer.log_metrics("eval", eval_metrics)
    trainer.save_metrics("eval", eval_metrics)
    test_metrics = trainer.evaluate(trainer.ft_test_dataset, metric_key_prefix="test")
    test_metrics["test_samples"] = len(trainer.ft_test_dataset)
    trainer.log_metrics("test", test_metrics)
    trainer.save_metrics("test", test_metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        run_hyperparameters = hyperparameters(args, trainer.ft_data.labels, getattr(trainer, "ft_class_weights", None))
        save_result(
            trainer.accelerator.unwrap_model(trainer.model),
            args.output_dir,
            trainer.processing_class,
            extra={
                "dataset": trainer.ft_data.source,
                "data": getattr(trainer, "ft_data_arguments", None),  # `ft-plugin evaluate` rebuilds the test split
                "text_pairs": trainer.ft_data.has_pairs,  # predictions then need both texts
                "max_seq_length": trainer.ft_max_seq_length,
                "train_seconds": round(time.perf_counter() - started, 2),
                "ft_plugin_version": _version(),
                "hyperparameters": run_hyperparameters,  # hub (issue 4): shown on the model card
                "hardware": hardware(args.world_size),
            },
        )
        write_model_card(args.output_dir)
        if getattr(trainer, "ft_push_to_hub", False):  # hub (issue 4): only the main process pushes
            push_after_training(args, token=getattr(trainer, "ft_hub_token", None))
    return {**train_metrics, **eval_metrics, **test_metrics}


def write_model_card(output_dir: str) -> None:
    """The result's README.md: ft-plugin's model card (results, labels, usage, training), in place of the blank
    template `save_pretrained` leaves; `push`/`export` write it again with the repo id."""
    try:
        render_card(output_dir).save(Path(output_dir) / "README.md")
    except (OSError, ValueError, KeyError) as error:  # the result itself is saved: say so, do not fail the run
        logger.warning("Could not write the model card %s/README.md: %s", output_dir, error)


# -- reliability (issue 9): output folder checks before training ------------------------------------------------
def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete `checkpoint-N` folder (like run_glue's `get_last_checkpoint`, but one killed while being
    written, without its `trainer_state.json` (the Trainer's last file), is skipped)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    folder = Path(output_dir)
    steps = {}
    for child in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if folder.is_dir() else []:
        if child.is_dir() and child.name.split("-")[-1].isdigit():
            steps[int(child.name.split("-")[-1])] = child
    for step in sorted(steps, reverse=True):
        if (steps[step] / "trainer_state.json").is_file():
            return str(steps[step])
        logger.warning(
            "Skipping incomplete checkpoint %s (no trainer_state.json: interrupted while saving).", steps[step]
        )
    return None


# What a run (or an interrupted one, or `--method auto`'s race) leaves in its --output_dir besides the result.
RUN_ARTEFACTS = (
    "runs", "auto-race", "auto_race.json", "all_results.json", "train_results.json", "eval_results.json",
    "test_results.json",
)  # fmt: skip


def foreign_files(output: Path) -> list[str]:
    """Names in `output` that no run wrote: not a checkpoint, hidden staging folder or run artefact."""
    if not output.is_dir():
        return []
    return sorted(
        name for name in os.listdir(output) if not name.startswith(("checkpoint-", ".")) and name not in RUN_ARTEFACTS
    )


def check_output_dir(training_args: TrainingArguments, overwrite_output_dir: bool = False) -> str | bool | None:
    """Before any work: refuse to overwrite a result, check the folder is writable, find a checkpoint to resume.

    Returns what to pass to `trainer.train(resume_from_checkpoint=...)`: `--resume_from_checkpoint` if given, else
    the last checkpoint in `--output_dir` (logged), unless `--overwrite_output_dir`.
    """
    from .saving import has_result

    output = Path(training_args.output_dir)
    if has_result(output) and not overwrite_output_dir:
        raise FtPluginError(
            f"--output_dir '{output}' already holds a trained result: pass --overwrite_output_dir to replace it, "
            "or choose another --output_dir."
        )
    others = foreign_files(output)
    if others and not overwrite_output_dir:  # run_glue's rule: a run does not mix its files into someone else's
        raise FtPluginError(
            f"--output_dir '{output}' is not empty ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}): "
            "choose a new or empty --output_dir, or pass --overwrite_output_dir to write into it (files with a "
            "result's names are replaced)."
        )
    try:
        if training_args.should_save:  # only the main process writes the folder, so only it needs to probe it
            output.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=output, prefix=".write-test-"):
                pass
    except OSError as error:
        raise FtPluginError(
            f"--output_dir '{output}' is not writable ({error.strerror or error}): choose a folder you can write to."
        ) from None
    resume = training_args.resume_from_checkpoint
    if resume and resume not in ("True", "true") and not os.path.isdir(resume):
        raise FtPluginError(f"--resume_from_checkpoint '{resume}' is not a folder: pass a checkpoint-N folder.")
    if resume in ("True", "true"):
        resume = last_checkpoint(output)
        if resume is None:
            raise FtPluginError(
                f"--resume_from_checkpoint true found no checkpoint in '{output}': pass a checkpoint-N folder, or "
                "leave the flag out to start training."
            )
    if resume is None and not overwrite_output_dir:
        resume = last_checkpoint(output)
        if resume is not None:
            logger.info(
                "Checkpoint detected, resuming training at %s. To avoid this, change --output_dir or add "
                "--overwrite_output_dir to train from scratch.",
                resume,
            )
    return resume


def check_free_space(trainer: Trainer) -> None:
    """Fail before training when the disk cannot hold one checkpoint plus the result (fp32 weights + Adam)."""
    trainable, total = count_parameters(trainer.model)
    needed = 4 * (3 * trainable + (total if trainable == total else trainable)) + 50 * 2**20  # + tokenizer, logs
    free = shutil.disk_usage(trainer.args.output_dir).free
    if free < needed:
        raise FtPluginError(
            f"Not enough disk space in '{trainer.args.output_dir}': about {needed / 2**20:.0f} MiB needed for a "
            f"checkpoint and the result, {free / 2**20:.0f} MiB free. Free some space or choose another --output_dir."
        )


# -- end reliability ---------------------------------------------------------------------------------------------


# flags that transformers 5 rejects with a message that does not say what to do instead
ARGUMENT_HINTS = {
    "--logging_dir": "transformers 5 removed --logging_dir: set the TENSORBOARD_LOGGING_DIR environment variable "
    "instead. ",
    "--bf16": "On a machine without a GPU, add --use_cpu true to train in bf16 on the CPU. ",
}


def parse_checked_args(argv: list[str], method: str | None = None, warn_unused_options: bool = True):
    """`parse_args` with its ValueErrors (unknown flags, TrainingArguments' own checks) as ft-plugin's one-line
    error, with a hint where transformers' message does not say what to do instead."""
    try:
        return parse_args(argv, method, warn_unused_options)
    except ValueError as error:
        if isinstance(error, FtPluginError):
            raise
        first = " ".join(line.strip() for line in str(error).strip().splitlines() if line.strip())  # one line, whole
        first = first or type(error).__name__
        given = {arg.split("=")[0] for arg in argv}
        hints = [hint for flag, hint in ARGUMENT_HINTS.items() if flag in given and flag[2:] in str(error)]
        raise MethodError(f"Invalid arguments: {first} {' '.join(hints)}(see --help).") from error


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None, method: str | None = None) -> dict[str, float] | None:
    """Entry point of every recipe: parse flags, build the trainer, train, evaluate, save.

    User errors are printed on one line (exit status 2); `--debug` keeps the traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    logger.info("Memory allocator: %s", allocator_in_use())  # mimalloc from the entry points (ft_plugin/allocator.py)
    try:
        argv = expand_config_file(argv)
        check_launch(argv)  # before TrainingArguments picks the device and process group
        from .auto import resolve_auto  # `--method auto`: race candidate methods briefly, then train the winner

        argv, data = resolve_auto(argv, method)
        model_args, data_args, method_args, training_args = parse_checked_args(argv, method)
        resume = check_output_dir(training_args, model_args.overwrite_output_dir)
        trainer = build_trainer(model_args, data_args, method_args, training_args, data=data)
        check_free_space(trainer)
        return train_and_save(trainer, resume)
    except CheckpointWriteError as error:  # any process may meet it alone: each says it, with how to go on
        if debug:
            raise
        print(f"ft-plugin: error: {error} {interrupted_state(argv, method)}", file=sys.stderr)
        raise SystemExit(2) from None
    except FtPluginError as error:
        if debug:
            raise
        if is_main_process():  # the processes of a launch fail alike: one line, not one a process
            print(f"ft-plugin: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl-C: say what is kept and how to go on, not where Python was
        if debug:
            raise
        if is_main_process():  # below a progress bar
            print(f"\nft-plugin: interrupted. {interrupted_state(argv, method)}", file=sys.stderr)
        raise SystemExit(130) from None


def interrupted_state(argv: list[str], method: str | None = None) -> str:
    """What an interrupted run left in its --output_dir, and how to go on from there."""
    from .auto import requested_method

    if requested_method(argv, method) == "auto":  # the race had not chosen yet (the final run's argv names it)
        return "The --method auto race was interrupted before it chose a method: the same command races again."
    try:
        output_dir = parse_args(argv, method)[3].output_dir
    except (FtPluginError, ValueError, SystemExit):
        return "Nothing was trained."
    checkpoint = last_checkpoint(output_dir)
    if checkpoint is None:
        return f"No checkpoint was saved in '{output_dir}' yet: run the same command to start again."
    if has_flag(argv, "--overwrite_output_dir"):  # it ignores checkpoints (and the folder may hold a result)
        return (
            f"The last checkpoint is '{checkpoint}': run the same command with --resume_from_checkpoint {checkpoint}."
        )
    return f"The last checkpoint is '{checkpoint}': run the same command to resume from it."
