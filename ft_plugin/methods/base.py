"""Small helpers shared by the method modules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from ..errors import MethodError


@dataclass
class MethodConfig:
    """Base of every method's hyper-parameters. `prefix` turns short keys (`r`) into flags (`lora_r`)."""

    prefix: ClassVar[str] = ""


@dataclass
class TargetModulesMixin:
    target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names (suffixes) to adapt, e.g. query value, or all-linear; default: the method's choice."
        },
    )


@dataclass
class VirtualTokensMixin:
    num_virtual_tokens: int = field(default=20, metadata={"help": "Prompt methods: number of virtual tokens."})

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:  # 0 trained a prompt method without a prompt; below 0 failed in torch
            raise MethodError(f"--num_virtual_tokens must be at least 1, got {self.num_virtual_tokens} (try 20).")


def parameters_containing(*markers: str) -> Callable[[nn.Module, object], list[str]]:
    """`trainable` function selecting parameters whose name contains any marker."""

    def trainable(model: nn.Module, config: object) -> list[str]:
        return [name for name, _ in model.named_parameters() if any(marker in name for marker in markers)]

    return trainable


def transformer_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer block list (e.g. `bert.encoder.layer`): the longest `ModuleList` in the model."""
    lists = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.ModuleList)]
    if not lists:
        raise ValueError("no transformer layers (nn.ModuleList) found")
    return max(lists, key=lambda item: len(item[1]))
