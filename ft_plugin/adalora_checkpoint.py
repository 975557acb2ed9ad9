"""AdaLoRA checkpoints that a resumed run can load, and that resume the rank allocation where it stopped.

PEFT saves an AdaLoRA adapter cut to its current rank pattern (the ranks its allocator has kept so far). That is
the right form for the trained result, which `PeftModel.from_pretrained` loads by cutting its modules to the same
pattern. A checkpoint is read back by a run whose modules and optimizer state are still at full rank, where the cut
tensors do not fit: resuming an AdaLoRA run after its first rank allocation failed on a size mismatch, and so did
loading an earlier best checkpoint at the end. Checkpoints here keep the full-rank matrices (the pruned ranks are
zeros there, as in the model) and, beside them, the allocator's state (the rank pattern and its importance
averages): a resumed run restores it, so its next allocations are the ones the uninterrupted run makes, and a best
checkpoint loaded at the end brings its own rank pattern, to which the result is then cut.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import torch
from peft import PeftModel
from peft.tuners.adalora import AdaLoraModel

ADALORA_STATE = "adalora_state.pt"
ALLOCATOR_AVERAGES = ("ipt", "exp_avg_ipt", "exp_avg_unc")  # peft's RankAllocator: importance and its averages


def adalora_tuner(model) -> AdaLoraModel | None:
    """The AdaLoRA tuner of a PEFT model being trained, else None."""
    tuner = model.base_model if isinstance(model, PeftModel) else None
    return tuner if isinstance(tuner, AdaLoraModel) and hasattr(tuner, "rankallocator") else None


@contextlib.contextmanager
def full_rank_adapter(model) -> Iterator[dict | None]:
    """While the block runs, PEFT saves and loads AdaLoRA's matrices at full rank, not cut to the rank pattern.
    Yields the rank pattern set aside meanwhile (None without AdaLoRA, or before its first allocation)."""
    tuner = adalora_tuner(model)
    if tuner is None:
        yield None
        return
    config = tuner.peft_config[tuner.trainable_adapter_name]
    pattern, config.rank_pattern = config.rank_pattern, None
    try:
        yield pattern
    finally:
        config.rank_pattern = pattern


def save_allocator_state(model, folder: str, rank_pattern: dict | None) -> None:
    """Write the AdaLoRA allocator's importance averages and `rank_pattern` (the one `full_rank_adapter` set aside
    for the save) into the checkpoint `folder`."""
    tuner = adalora_tuner(model)
    if tuner is None:
        return
    allocator = tuner.rankallocator
    state = {name: getattr(allocator, name) for name in ALLOCATOR_AVERAGES}
    state["rank_pattern"] = rank_pattern
    torch.save(state, os.path.join(folder, ADALORA_STATE))


@contextlib.contextmanager
def allocator_state_from(model, checkpoint: str | None) -> Iterator[None]:
    """While the Trainer loads `checkpoint` into `model` (resume, load-best), AdaLoRA's matrices load at full rank;
    then the allocator's state saved beside them is restored (see `load_allocator_state`)."""
    with full_rank_adapter(model):
        yield
    load_allocator_state(model, checkpoint)


def load_allocator_state(model, folder: str | None) -> None:
    """Restore what `save_allocator_state` wrote in `folder` (nothing to do without the file or AdaLoRA)."""
    tuner = adalora_tuner(model)
    path = os.path.join(folder or "", ADALORA_STATE)
    if tuner is None or not os.path.isfile(path):
        return
    state = torch.load(path, map_location="cpu", weights_only=True)
    device = next(tuner.parameters()).device
    for name in ALLOCATOR_AVERAGES:
        setattr(tuner.rankallocator, name, {key: value.to(device) for key, value in state[name].items()})
    tuner.peft_config[tuner.trainable_adapter_name].rank_pattern = state["rank_pattern"]


@contextlib.contextmanager
def rank_pattern_false_alarm_silenced() -> Iterator[None]:
    """Loading an AdaLoRA result: without PEFT's warning that its `rank_pattern` keys "did not match any targeted
    module and were ignored". PEFT's check (peft 0.21, huggingface/peft#3588) matches the keys against module names,
    as LoRA's are; AdaLoRA's keys are parameter names (`...query.lora_E`), which AdaLoRA matches itself when it cuts
    the loaded modules to the pattern, so the warning fires on every AdaLoRA load while the pattern is applied."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The following rank_pattern keys did not match", category=RuntimeWarning
        )
        yield
