"""The `Trainer` every recipe, sweep and Space job uses: a `transformers.Trainer` with dynamic padding,
accuracy/macro-F1, evaluation in order of length, a resume that replays the interrupted epoch's shuffle exactly, and
an optional class-weighted loss (`--class_weights`) passed as the Trainer's own `compute_loss_func`.

Evaluation and prediction run the texts longest first, so each batch pads only to texts of its own length (the
order changes no metric; `predict` returns its outputs in the dataset's order). With `group_by_length`,
transformers 5.23 evaluates in random "megabatches" of at most a quarter of the set: at batch 64 on 300 tweets,
single random batches, each padded to its longest text, and `predict` returned that shuffled order.

Resuming mid-epoch replays the epoch's order only if the order is a function of (seed, epoch). Two things in
transformers 5.23 / accelerate 1.15 break that, and both are fixed here:

- `--train_sampling_strategy group_by_length` (our default) shuffles with the global torch RNG when the epoch's
  iterator is created; a resumed run restores the RNG only after that, so epoch k >= 1 was redrawn differently.
  `EpochSeededLengthGroupedSampler` draws epoch k from `seed + k` instead (as accelerate's seedable sampler does).
- With several processes the resumed epoch's loader is wrapped in `SkipBatchSampler`, through which `set_epoch`
  does not reach the sampler (huggingface/accelerate#2016): `ResumeEpochCallback` sets it at each epoch start.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from peft import AdaLoraConfig, PeftModel, PeftType
from torch.utils.data import Sampler
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PredictionOutput

from .adalora_checkpoint import allocator_state_from, full_rank_adapter, save_allocator_state
from .errors import CheckpointWriteError, DataError, FtPluginError, first_line
from .methods import head_parameter_names
from .metrics import compute_metrics
from .models import whole_modules


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """`LengthGroupedSampler` whose order for epoch k depends only on `seed + k`."""

    def __init__(self, sampler: LengthGroupedSampler, seed: int):
        super().__init__(sampler.batch_size, lengths=sampler.lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class LengthSortedSampler(Sampler[int]):
    """The indices of a tokenised dataset, longest text first (ties in dataset order)."""

    def __init__(self, lengths: list[int]):
        self.order = sorted(range(len(lengths)), key=lambda index: -lengths[index])

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class ResumeEpochCallback(TrainerCallback):
    """Set the epoch on every sampler under the train dataloader at each epoch start.

    Needed when a multi-process run resumes in the middle of an epoch (the sampler is then out of `set_epoch`'s
    reach, see the module docstring); otherwise the Trainer's own `set_epoch` sets the same value right after.
    """

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        for sampler in nested_samplers(train_dataloader):
            sampler.set_epoch(int(state.epoch))  # resumed in the middle of epoch k: state.epoch is in (k, k + 1)


def nested_samplers(loader, depth: int = 4) -> list:
    """The samplers and batch samplers under `loader` that have `set_epoch` (not the loader itself)."""
    found, level = [], [loader]
    for _ in range(depth):
        level = [getattr(outer, name, None) for outer in level for name in ("batch_sampler", "sampler")]
        level = [inner for inner in level if inner is not None]
        found += [inner for inner in level if hasattr(inner, "set_epoch") and all(inner is not f for f in found)]
    return found


# How a full disk surfaces while a checkpoint is written: an OSError from Python's own files, safetensors'
# SafetensorError, and torch.save's RuntimeError from its zip writer (measured on a 2 MiB tmpfs)
WRITE_FAILURES = ("No space left on device", "Disk quota exceeded", "PytorchStreamWriter", "unexpected pos")


def is_write_failure(error: BaseException) -> bool:
    """Whether `error` is a file that could not be written (a full disk, a quota), whatever library wrote it."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(marker in str(error) for marker in WRITE_FAILURES)


class ClassificationTrainer(Trainer):
    """A `Trainer` for sequence classification whose length-grouped shuffle is seeded per epoch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Classification losses are per-batch means that ignore `num_items_in_batch`. Left True, the Trainer
        # multiplies the loss by the number of processes and skips the division by gradient_accumulation_steps.
        self.model_accepts_loss_kwargs = False
        # while a checkpoint is saved: AdaLoRA's rank pattern, which `_save` writes beside the full-rank weights
        self._saving_checkpoint, self._checkpoint_rank_pattern = False, None
        self.add_callback(ResumeEpochCallback())
        if isinstance(self.model, PeftModel):
            # PEFT's checkpoint saves default to save_embedding_layers="auto", which asks the Hub for the base's
            # config.json whenever its name is a Hub id (the embedded default's is): a network call at every
            # checkpoint, a warning offline. No method here changes the embeddings (the result is saved the same way).
            self.model.save_pretrained = functools.partial(self.model.save_pretrained, save_embedding_layers=False)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        cap_head_learning_rate(optimizer, self.model if model is None else model)
        return optimizer

    def evaluation_loop(self, *args, **kwargs):
        """`Trainer.evaluation_loop` (evaluate and predict), reporting the classification loss only: AdaLoRA's PEFT
        model adds its orthogonality regulariser to the loss in evaluation too (2.94 reported against 1.31 cross-
        entropy in a side-by-side check), so its eval and test losses did not describe the saved model's predictions."""
        adalora = [c for c in getattr(self.model, "peft_config", {}).values() if isinstance(c, AdaLoraConfig)]
        weights = [config.orth_reg_weight for config in adalora]
        for config in adalora:
            config.orth_reg_weight = 0.0
        try:
            return super().evaluation_loop(*args, **kwargs)
        finally:
            for config, weight in zip(adalora, weights):
                config.orth_reg_weight = weight

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, with a full disk as one line (libraries word it differently: WRITE_FAILURES);
        AdaLoRA's at full rank, with its allocator's state (`ft_plugin.adalora_checkpoint`)."""
        try:
            with full_rank_adapter(self.model) as rank_pattern:
                self._saving_checkpoint, self._checkpoint_rank_pattern = True, rank_pattern
                super()._save_checkpoint(model, trial)
        except Exception as error:
            if not is_write_failure(error):
                raise
            for callback in self.callback_handler.callbacks:  # the error's line starts below the bar, not on it
                if getattr(callback, "training_bar", None) is not None:
                    callback.training_bar.close()
                    callback.training_bar = None
            raise CheckpointWriteError(
                f"Could not write a checkpoint in '{self.args.output_dir}' ({first_line(error)}): the disk is full "
                "or not writable. Free some space (or keep fewer checkpoints: --save_total_limit 1)."
            ) from error
        finally:
            self._saving_checkpoint, self._checkpoint_rank_pattern = False, None

    # -- checkpoints of reparameterised prompts (p-tuning, prefix with projection) -------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """The Trainer's checkpoint, plus the whole prompt encoder where PEFT saves only its output (see
        `reparameterised_prompt_encoder`), so that resume and load-best restore what was trained."""
        super()._save(output_dir, state_dict)
        if not self.args.should_save:  # the Trainer saves on one process; the others' folders may not exist yet
            return
        if self._saving_checkpoint:
            save_allocator_state(self.model, output_dir or self.args.output_dir, self._checkpoint_rank_pattern)
        encoder = reparameterised_prompt_encoder(self.model)
        if encoder is not None:
            from safetensors.torch import save_file

            state = {key: value.detach().cpu().contiguous() for key, value in encoder.state_dict().items()}
            save_file(state, os.path.join(output_dir or self.args.output_dir, PROMPT_ENCODER_STATE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        with (
            resume_errors(resume_from_checkpoint),
            prompt_encoder_state_from(model or self.model, resume_from_checkpoint),
            allocator_state_from(model or self.model, resume_from_checkpoint),
        ):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        with resume_errors(checkpoint):
            super()._load_optimizer_and_scheduler(checkpoint)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        with prompt_encoder_state_from(self.model, best), allocator_state_from(self.model, best):
            super()._load_best_model()

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededLengthGroupedSampler(sampler, seed)
        return sampler

    def _get_eval_sampler(self, eval_dataset):
        column = self.processing_class.model_input_names[0] if self.processing_class is not None else "input_ids"
        if eval_dataset is None or column not in getattr(eval_dataset, "column_names", ()):
            return super()._get_eval_sampler(eval_dataset)
        return LengthSortedSampler([len(ids) for ids in eval_dataset[column][:]])

    def predict(self, test_dataset, *args, **kwargs) -> PredictionOutput:
        """`Trainer.predict`, with predictions and label ids in the dataset's order (it runs longest first)."""
        output = super().predict(test_dataset, *args, **kwargs)
        sampler = self._get_eval_sampler(test_dataset)
        if not isinstance(sampler, LengthSortedSampler):
            return output
        restore = np.argsort(sampler.order)  # position in the run -> position in the dataset

        def in_dataset_order(values):
            if values is None:
                return None
            if isinstance(values, (tuple, list)):
                return type(values)(in_dataset_order(v) for v in values)
            return values[restore]

        return PredictionOutput(
            in_dataset_order(output.predictions), in_dataset_order(output.label_ids), output.metrics
        )


PROMPT_ENCODER_STATE = "prompt_encoder_state.safetensors"


# The fastest the layers trained whole learn: the new classification head and a base module the checkpoint never
# trained (`models.whole_modules`: BERT's pooler, missing or untrained). Training the pooler helped every method at
# 1e-3 to 1e-2; at the prompt methods' 3e-2 and 1e-1 the embedded model's pooler (384 x 384, then tanh) went astray on
# one seed in two, and intrinsic prompt tuning lost 6 points with it until its head was capped too (bench/README.md,
# "A pooler the checkpoint never trained" and "The head's rate").
HEAD_MAX_LR = 1e-2


def cap_head_learning_rate(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
    """Move the trainable parameters of the head and of `whole_modules(model)` (`head_parameter_names`) out of any
    parameter group faster than `HEAD_MAX_LR` into a copy of that group at that rate (the scheduler then
    scales it like the rest)."""
    head = head_parameter_names(model)
    capped = {id(p) for name, p in model.named_parameters() if p.requires_grad and name in head}
    faster = [group for group in optimizer.param_groups if group["lr"] > HEAD_MAX_LR]
    for group in faster:
        slow = [p for p in group["params"] if id(p) in capped]
        if not slow:
            continue
        group["params"] = [p for p in group["params"] if id(p) not in capped]
        if not group["params"]:
            optimizer.param_groups.remove(group)
        optimizer.add_param_group({**group, "params": slow, "lr": HEAD_MAX_LR})
    if capped and faster:
        logging.getLogger("ft_plugin").info(
            "The classification head%s: learning rate %g (the rest: %g).",
            "".join(f", {name}" for name in whole_modules(model)), HEAD_MAX_LR, faster[0]["lr"],
        )  # fmt: skip


@contextlib.contextmanager
def resume_errors(checkpoint: str | None):
    """A checkpoint that does not fit this run (another method, model or optimizer) as one line naming the fix,
    not torch's traceback from deep inside the load."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise
    except (ValueError, RuntimeError, KeyError) as error:
        first = first_line(error)
        if "valid checkpoint" in first:  # the Trainer's "Can't find a valid checkpoint at ..."
            raise FtPluginError(
                f"'{checkpoint}' is not a checkpoint folder (no model weights): pass a checkpoint-N folder."
            ) from error
        raise FtPluginError(
            f"Could not resume from '{checkpoint}' ({first}): it was saved by another method, model or settings; "
            "pass a checkpoint of this run, or train from scratch (without --resume_from_checkpoint; "
            "--overwrite_output_dir ignores the checkpoints in --output_dir)."
        ) from error


def reparameterised_prompt_encoder(model) -> torch.nn.Module | None:
    """The prompt encoder of a PEFT p-tuning or projected-prefix model, else None.

    PEFT checkpoints of these hold the encoder's output (`prompt_embeddings`), not its parameters (an embedding and
    an MLP), and load that output into the embedding: p-tuning then ran the MLP twice (the prompt changed silently,
    by up to 0.78 in a check), a projected prefix failed on the shapes (peft#2256). The result folder saved after
    training is right as it is: there the output is the prompt, loaded in inference mode without the MLP."""
    if not isinstance(model, PeftModel) or not getattr(model, "prompt_encoder", None):
        return None
    config = model.peft_config[model.active_adapter]
    if config.peft_type == PeftType.P_TUNING or getattr(config, "prefix_projection", False):
        return model.prompt_encoder[model.active_adapter]
    return None


@contextlib.contextmanager
def prompt_encoder_state_from(model, checkpoint: str | None):
    """While the Trainer loads `checkpoint` into `model`, the prompt encoder takes its full saved state (see
    `reparameterised_prompt_encoder`) instead of PEFT's `prompt_embeddings`; other weights load as usual."""
    encoder = reparameterised_prompt_encoder(model)
    path = os.path.join(checkpoint or "", PROMPT_ENCODER_STATE)
    if encoder is None or not os.path.isfile(path):
        yield
        return
    from safetensors.torch import load_file

    state = load_file(path)

    def load_full_state(_peft_state: dict) -> None:
        encoder.load_state_dict(state, strict=True)

    encoder._load_adapter_state_dict = load_full_state
    try:
        yield
    finally:
        del encoder._load_adapter_state_dict  # back to the class's method


def parse_class_weights(value: str | None) -> str | dict[str, float] | None:
    """`--class_weights` as None, `"balanced"` or `{label: weight}`; a one-line error for anything else."""
    if value is None or value.strip().lower() in ("", "none"):
        return None
    if value.strip().lower() == "balanced":
        return "balanced"
    weights = {}
    for item in value.split(","):
        label, equals, number = item.rpartition("=")
        try:
            weight = float(number)
        except ValueError:
            weight = math.nan
        if not equals or not label.strip() or not (weight > 0 and math.isfinite(weight)):
            raise FtPluginError(
                f"--class_weights {value!r} is not understood: use balanced, or label=weight pairs with positive "
                "weights, e.g. negative=1,neutral=1,positive=2."
            )
        weights[label.strip()] = weight
    return weights


def class_weights_for(value: str | None, labels: list[str], train_label_ids: Sequence[int]) -> torch.Tensor | None:
    """One loss weight per label (in label-id order) for `--class_weights`, or None. `balanced` is scikit-learn's
    `n_samples / (n_classes * count)`, whose mean over the training examples is 1; named weights leave the labels
    they do not name at 1."""
    spec = parse_class_weights(value)
    if spec is None:
        return None
    if spec == "balanced":
        counts = np.bincount(np.asarray(train_label_ids, dtype=np.int64), minlength=len(labels))
        weights = len(train_label_ids) / (len(labels) * np.maximum(counts, 1))
    else:
        unknown = sorted(set(spec) - set(labels))
        if unknown:
            raise DataError(f"--class_weights names labels the data does not have: {unknown}; its labels are {labels}.")
        weights = [spec.get(label, 1.0) for label in labels]
    return torch.tensor(weights, dtype=torch.float32)


class WeightedCrossEntropy:
    """Class-weighted cross-entropy for `Trainer(compute_loss_func=...)`: each example's loss times its class's
    weight, summed and divided by the number of examples in the whole accumulated batch when the Trainer passes it
    (so gradient accumulation and several processes give the loss of the full batch), else averaged."""

    def __init__(self, weights: torch.Tensor, label_smoothing: float = 0.0):
        self.weights, self.label_smoothing = weights, label_smoothing

    def __call__(self, outputs, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        losses = F.cross_entropy(logits.float(), labels, reduction="none", label_smoothing=self.label_smoothing)
        weighted = losses * self.weights.to(logits.device)[labels]
        return weighted.sum() / num_items_in_batch if num_items_in_batch is not None else weighted.mean()


def classification_trainer(
    training_args, tokenized, tokenizer, callbacks, class_weights: torch.Tensor | None = None, **model_or_init
) -> ClassificationTrainer:
    """A `ClassificationTrainer` on tokenised train/validation splits with dynamic padding and accuracy/macro-F1.

    `model_or_init` is `model=...` or `model_init=...` (sweeps); `class_weights` (one per label) weights the loss.
    Shared by recipes, sweeps and Space jobs.
    """
    loss = None if class_weights is None else WeightedCrossEntropy(class_weights, training_args.label_smoothing_factor)
    return ClassificationTrainer(
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8),
        compute_metrics=compute_metrics,
        compute_loss_func=loss,
        callbacks=callbacks,
        **model_or_init,
    )
