"""Apply one method or a combination (`lora+bitfit`) to a base model and set exactly what trains."""

from __future__ import annotations

import warnings
from dataclasses import fields
from typing import Any

import peft
from torch import nn

from ..errors import MethodError
from ..models import in_new_modules, untrained_encoder_modules, whole_modules
from .registry import MethodSpec, parse_method

# Order in which a combination's members are applied: in-place changes first, the PEFT wrapper last.
SLOT_ORDER = ["full", "selective", "bias", "reparameterised", "adapter", "prompt"]


def configs_from_arguments(specs: list[MethodSpec], arguments: Any = None, **overrides: Any) -> list[Any]:
    """Each method's config, from a parsed arguments object (CLI) and keyword overrides (`r=16` or `lora_r=16`)."""
    configs, used = [], set()
    exact = {f.name for spec in specs for f in fields(spec.config_cls)}  # a field's own name is never a short one
    for spec in specs:
        names = {f.name for f in fields(spec.config_cls)}
        values = {name: getattr(arguments, name) for name in names if hasattr(arguments, name)}
        for key, value in overrides.items():
            full = key if key in exact else f"{spec.config_cls.prefix}_{key}"
            if full in names:
                values[full] = value
                used.add(key)
        configs.append(spec.config_cls(**values))
    unused = sorted(set(overrides) - used)
    if unused:
        options = sorted({f.name for spec in specs for f in fields(spec.config_cls)})
        raise MethodError(f"Unknown option(s) {unused} for '{'+'.join(s.name for s in specs)}': use {options}.")
    return configs


def head_parameter_names(model: nn.Module) -> set[str]:
    """The classification head: PEFT's `modules_to_save` copy, or whatever lies outside the base encoder, plus the
    encoder modules the checkpoint lacked or never trained (`models.whole_modules`: new like the head, e.g. BERT's
    pooler)."""
    names = [name for name, _ in model.named_parameters()]
    whole = whole_modules(model)
    if isinstance(model, peft.PeftModel):  # whole modules: PEFT's copy for a method alone, themselves in combinations
        return {
            n for n in names if ".modules_to_save." in n or in_new_modules(n, whole) and ".original_module." not in n
        }
    prefix = getattr(model, "base_model_prefix", "") + "."
    return {name for name in names if not name.startswith(prefix) or in_new_modules(name, whole)}


def apply_method(model: nn.Module, method: str, arguments: Any = None, **overrides: Any) -> nn.Module:
    """Turn a base `*ForSequenceClassification` model into a trainable one for `method`.

    `arguments` is a parsed `MethodArguments` (CLI); `overrides` are keyword options (`r=16` or `lora_r=16`).
    Returns the model to train: a `PeftModel` for PEFT methods used alone, else the (changed) model.
    Only the method's weights and the classification head are trainable afterwards.
    """
    named = parse_method(method)  # the user's order names the result; the slot order applies it
    if not hasattr(model, "ft_plugin_untrained_modules"):  # a model the caller loaded: `load_base_model` sets it
        model.ft_plugin_untrained_modules = untrained_encoder_modules(model, whole_modules(model))
    specs = sorted(named, key=lambda spec: SLOT_ORDER.index(spec.slot))
    configs = configs_from_arguments(specs, arguments, **overrides)
    combined = len(specs) > 1
    with warnings.catch_warnings():
        if combined:  # PEFT warns that a model is adapted twice: here that is the point
            warnings.filterwarnings("ignore", message=".*(second time|multiple adapters).*")
        for spec, config in zip(specs, configs):
            model = spec.apply(model, config, combined)
    trainable = head_parameter_names(model)
    for spec, config in zip(specs, configs):
        own = spec.trainable(model, config)
        if not own:
            raise MethodError(f"Method '{spec.name}' found nothing to train in this model: check --target_modules.")
        trainable.update(own)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name in trainable
    model.ft_plugin_method = "+".join(spec.name for spec in named)
    model.ft_plugin_configs = {spec.name: config for spec, config in zip(specs, configs)}
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; PEFT's frozen copies of the head are not counted twice."""
    trainable = total = 0
    for name, parameter in model.named_parameters():
        if ".original_module." in name:
            continue
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return trainable, total


def trainable_report(model: nn.Module) -> str:
    """`print_trainable_parameters`-style one-liner."""
    trainable, total = count_parameters(model)
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"
