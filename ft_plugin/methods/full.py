"""Full fine-tuning and layer freezing: the two reference methods that change no architecture."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..errors import MethodError
from .base import MethodConfig, transformer_layers
from .registry import MethodSpec, register_method


@dataclass
class FullConfig(MethodConfig):
    """Full fine-tuning: every weight is trained. Default learning rate 5e-5 (as in BERT's paper)."""

    prefix = "full"


@dataclass
class FreezeConfig(MethodConfig):
    """Freeze the encoder, train the top `freeze_trainable_layers` layers (+ pooler) and the new head.

    Args:
        freeze_trainable_layers: how many of the top transformer layers stay trainable (0: head only, i.e. a
            linear probe on frozen features). Default 2. Default learning rate 1e-4.
    """

    prefix = "freeze"
    freeze_trainable_layers: int = field(
        default=2, metadata={"help": "freeze: number of top transformer layers kept trainable (0 = head only)."}
    )

    def __post_init__(self) -> None:
        if self.freeze_trainable_layers < 0:
            raise MethodError(f"--freeze_trainable_layers must be >= 0, got {self.freeze_trainable_layers}.")


def _unchanged(model: nn.Module, config: object, combined: bool) -> nn.Module:
    return model


def _all_parameters(model: nn.Module, config: object) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def _top_layers(model: nn.Module, config: FreezeConfig) -> list[str]:
    """Parameters of the top-k transformer layers and of the pooler (the head is added by the composer)."""
    prefix, layers = transformer_layers(model)
    if config.freeze_trainable_layers > len(layers):
        raise MethodError(
            f"--freeze_trainable_layers {config.freeze_trainable_layers} exceeds the model's {len(layers)} layers."
        )
    first = len(layers) - config.freeze_trainable_layers
    trainable = [f"{prefix}.{i}." for i in range(first, len(layers))]
    return [
        name
        for name, _ in model.named_parameters()
        if any(marker in name for marker in trainable) or ".pooler." in name
    ]


register_method(
    MethodSpec(
        name="full",
        family="full",
        config_cls=FullConfig,
        apply=_unchanged,
        trainable=_all_parameters,
        slot="full",
        save_format="full",
        learning_rate=5e-5,
        description="Full fine-tuning: every weight is trained.",
        combinable=False,
    )
)
register_method(
    MethodSpec(
        name="freeze",
        family="selective",
        config_cls=FreezeConfig,
        apply=_unchanged,
        trainable=_top_layers,
        slot="selective",
        save_format="full",
        learning_rate=1e-4,
        description="Freeze lower layers; train the top-k layers and the new classification head.",
    )
)
