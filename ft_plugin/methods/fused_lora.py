"""LoRA's update added inside one matrix multiply (`--fused_lora true`, the default).

PEFT's LoRA linear layer computes `result + lora_B(lora_A(x)) * scaling`: after the two small matmuls, a multiply
and an add each pass over the whole output (tokens x out_features), and backward passes over it once more for the
multiply's gradient. `torch.addmm(result, lora_A(x), lora_B.weight.T, alpha=scaling)` does the same sum in the
matmul's own epilogue (BLAS's `C = beta C + alpha A B`), and its backward folds the scaling into its matmuls too.
Same parameters, same state dict, same outputs (to float rounding): only the forward of plain LoRA on a plain
`nn.Linear` changes. DoRA and other variants, LoRA bias, mixed-adapter batches, merged or disabled adapters and
mixed dtypes keep PEFT's forward. Measured effect: bench/README.md, "LoRA's update in one `addmm`".
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn


class FusedLoraLinear(LoraLinear):
    """PEFT's `lora.Linear` whose plain-LoRA forward adds `scaling * B(A(x))` to the base output in one `addmm`."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs or not self._fusable(x):
            return super().forward(x, *args, **kwargs)
        result = self.base_layer(x)
        flat = result.reshape(-1, result.shape[-1])
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            down = self.lora_A[name](self.lora_dropout[name](x)).reshape(-1, self.r[name])
            flat = torch.addmm(flat, down, self.lora_B[name].weight.t(), alpha=self.scaling[name])
        return flat.view(result.shape)

    def _fusable(self, x: torch.Tensor) -> bool:
        """Plain LoRA adapters, active and unmerged, of the input's dtype (or under autocast, which casts them)."""
        if self.disable_adapters or self.merged:
            return False
        active = [name for name in self.active_adapters if name in self.lora_A]
        if any(name in self.lora_variant or self.lora_B[name].bias is not None for name in active):
            return False
        if torch.is_autocast_enabled(x.device.type):
            return True
        dtypes = {x.dtype, self.base_layer.weight.dtype}
        dtypes.update(p.dtype for name in active for p in (self.lora_A[name].weight, self.lora_B[name].weight))
        return len(dtypes) == 1


def fuse_lora_layers(model: nn.Module) -> int:
    """Give every PEFT LoRA linear layer of `model` (exactly `lora.Linear`, not a quantised or other subclass) the
    fused forward; returns how many. Nothing saved or loaded changes: the class keeps PEFT's weights and methods."""
    layers = [module for module in model.modules() if type(module) is LoraLinear]
    for module in layers:
        module.__class__ = FusedLoraLinear
    return len(layers)
