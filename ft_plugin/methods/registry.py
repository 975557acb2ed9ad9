"""The one registry of delta methods. The CLI, recipes, Space and sweeps all read it; nothing dispatches on names.

A method is a `MethodSpec`: a config dataclass (its hyper-parameters with documented defaults) and an `apply`
function that turns a base model into a trainable one. Combinations (`lora+bitfit`) compose registered methods;
`compose.py` checks that a set is compatible and applies it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import MethodError


@dataclass(frozen=True)
class MethodSpec:
    """A registered delta method.

    Args:
        name: the `--method` value.
        family: `full`, `selective`, `reparameterised`, `additive` or `prompt` (the usual taxonomy).
        config_cls: dataclass of the method's hyper-parameters; its field names are the CLI flags.
        apply: `apply(model, config, combined)` changes `model` in place or wraps it, returns the model.
            `combined` is True inside a combination (then PEFT tuners are injected, not wrapped).
        trainable: `trainable(model, config)` names the parameters this method trains (and saves in delta
            files), once every method of a combination is applied. The classification head is added for all.
        slot: methods sharing a slot cannot be combined (e.g. two prompt methods).
        save_format: `peft` (a standard PEFT adapter folder), `full` (a whole model) or `delta` (ft-plugin's).
        learning_rate: the default learning rate for this method.
        combinable: False where the method needs the whole model to itself (full fine-tuning, AdaLoRA).
    """

    name: str
    family: str
    config_cls: type
    apply: Callable[[nn.Module, Any, bool], nn.Module]
    trainable: Callable[[nn.Module, Any], list[str]]
    slot: str
    save_format: str
    learning_rate: float
    description: str
    combinable: bool = True


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method to the registry (as peft's `register_peft_method` does)."""
    if spec.name in METHODS:
        raise ValueError(f"Method '{spec.name}' is already registered.")
    METHODS[spec.name] = spec
    return spec


def parse_method(method: str) -> list[MethodSpec]:
    """`"lora+bitfit"` -> the specs, checked for existence and compatibility."""
    names = [part.strip() for part in method.split("+")]
    if "" in names and len(names) > 1:  # `lora+` would train plain LoRA
        raise MethodError(f"Method '{method}' has an empty part: name the methods to combine, e.g. lora+bitfit.")
    names = [name for name in names if name]
    unknown = [name for name in names if name not in METHODS]
    if not names or unknown:
        raise MethodError(
            f"Unknown method '{'+'.join(unknown) or method}': choose from {', '.join(METHODS)}, "
            "or combine them with '+', e.g. lora+bitfit."
        )
    if len(set(names)) != len(names):
        raise MethodError(f"Method '{method}' names a method twice: name each once.")
    specs = [METHODS[name] for name in names]
    if len(specs) > 1:
        for spec in specs:
            if not spec.combinable:
                raise MethodError(f"'{spec.name}' cannot be combined with other methods: use it alone.")
        slots: dict[str, str] = {}
        for spec in specs:
            if spec.slot in slots:
                raise MethodError(
                    f"'{slots[spec.slot]}' and '{spec.name}' cannot be combined: both are {spec.slot} methods "
                    "that change the same part of the model; keep one of them."
                )
            slots[spec.slot] = spec.name
    return specs
