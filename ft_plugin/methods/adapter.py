"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021), which PEFT does not have.

A small down-projection, non-linearity and zero-initialised up-projection is added, with a residual, to the
output projection of the attention block and of the feed-forward block (Houlsby) or of the feed-forward
block only (Pfeiffer). Like PEFT's tuner layers, the adapted `nn.Linear` is wrapped, keeping the original as
`base_layer`, so the model starts out computing exactly what the base model computes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import Tensor, nn

from ..errors import MethodError
from .base import MethodConfig, parameters_containing
from .registry import MethodSpec, register_method

PLACEMENTS = {
    # after the attention output projection and after the feed-forward output projection (BERT/RoBERTa names)
    "houlsby": r"(attention\.output\.dense|layer\.\d+\.output\.dense|attention\.out_lin|ffn\.lin2)$",
    # after the feed-forward output projection only
    "pfeiffer": r"(layer\.\d+\.output\.dense|ffn\.lin2)$",
}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


@dataclass
class AdapterArguments(MethodConfig):
    """Bottleneck adapters.

    Args:
        adapter_reduction_factor: hidden size / bottleneck size. Lower: more capacity and parameters. Default 16.
        adapter_placement: `houlsby` (after attention and feed-forward) or `pfeiffer` (feed-forward only, half
            the parameters, about the same accuracy). Default houlsby.
        adapter_non_linearity: relu, gelu, tanh or silu. Default relu.
        adapter_target_modules: a regular expression for the `nn.Linear` outputs to adapt, overriding the
            placement (for architectures whose names differ from BERT's). Default learning rate 1e-3.
    """

    prefix = "adapter"
    adapter_reduction_factor: int = field(default=16, metadata={"help": "adapter: hidden size / bottleneck size."})
    adapter_placement: str = field(default="houlsby", metadata={"help": "adapter: houlsby or pfeiffer."})
    adapter_non_linearity: str = field(default="relu", metadata={"help": "adapter: relu, gelu, tanh or silu."})
    adapter_target_modules: str | None = field(
        default=None, metadata={"help": "adapter: regex of linear layers to adapt (overrides the placement)."}
    )

    def __post_init__(self) -> None:
        if self.adapter_reduction_factor < 1:
            raise MethodError(f"--adapter_reduction_factor must be >= 1, got {self.adapter_reduction_factor}.")
        if self.adapter_placement not in PLACEMENTS:
            raise MethodError(f"--adapter_placement must be one of {list(PLACEMENTS)}, got '{self.adapter_placement}'.")
        if self.adapter_non_linearity not in ACTIVATIONS:
            raise MethodError(f"--adapter_non_linearity must be one of {list(ACTIVATIONS)}.")


class BottleneckAdapter(nn.Module):
    """`h + up(act(down(h)))`, with `up` zero-initialised so that training starts from the base model."""

    def __init__(self, size: int, reduction_factor: int, non_linearity: str) -> None:
        super().__init__()
        bottleneck = max(1, size // reduction_factor)
        self.down = nn.Linear(size, bottleneck)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(bottleneck, size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


class AdaptedLinear(nn.Module):
    """An `nn.Linear` followed by a bottleneck adapter; the original layer is kept as `base_layer`."""

    def __init__(self, base_layer: nn.Module, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.bottleneck_adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        return self.bottleneck_adapter(self.base_layer(x))


def add_adapters(model: nn.Module, config: AdapterArguments, combined: bool = False) -> nn.Module:
    """Wrap every matching `nn.Linear` (outputs of attention/feed-forward blocks) with a bottleneck adapter."""
    pattern = re.compile(config.adapter_target_modules or PLACEMENTS[config.adapter_placement])
    # The outermost module of each matching name: an nn.Linear, or a PEFT tuner layer already wrapping one.
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if hasattr(module, "out_features") and pattern.search(name) and "bottleneck_adapter" not in name
    ]
    if not targets:
        raise MethodError(
            f"No linear layer matches the adapter pattern '{pattern.pattern}' in this model: "
            "pass --adapter_target_modules with a regex of its output projections."
        )
    for name, layer in targets:
        parent_name, _, child = name.rpartition(".")
        adapter = BottleneckAdapter(layer.out_features, config.adapter_reduction_factor, config.adapter_non_linearity)
        weight = next(layer.parameters())
        adapter.to(device=weight.device, dtype=weight.dtype)
        setattr(model.get_submodule(parent_name), child, AdaptedLinear(layer, adapter))
    return model


register_method(
    MethodSpec(
        name="adapter",
        family="additive",
        config_cls=AdapterArguments,
        apply=add_adapters,
        trainable=parameters_containing(".bottleneck_adapter."),
        slot="adapter",
        save_format="delta",
        learning_rate=1e-3,
        description="Bottleneck adapters after attention and feed-forward blocks (Houlsby or Pfeiffer).",
    )
)
