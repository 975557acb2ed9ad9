"""LoRA's update added inside one matrix multiply (`--fused_lora true`, the default).

PEFT's LoRA linear layer computes `result + lora_B(lora_A(x)) * scaling`: after the two small matmuls, a multiply
and an add each pass over the whole output (tokens x out_features), and backward passes over it once more for the
multiply's gradient. `torch.addmm(result, lora_A(x), lora_B.weight.T, alpha=scaling)` does the same sum in the
matmul's own epilogue (BLAS's `C = beta C + alpha A B`), and its backward folds the scaling into its matmuls too.

With one adapter, no LoRA dropout (the default) and a frozen `nn.Linear` base, the whole layer is one autograd
function (`_LoraLinearFunction`, as unsloth's fused LoRA kernels do): the update is added in place to the base
output (no copy of it), and the backward pass adds LoRA's input gradient in place to the base's (one output tensor,
no extra sum) and takes each rank-r product in the orientation BLAS runs fastest. Same parameters, same state dict,
same outputs (to float rounding): only the forward of plain LoRA on a plain `nn.Linear` changes. DoRA and other
variants, LoRA bias, mixed-adapter batches, merged or disabled adapters and mixed dtypes keep PEFT's forward.
Measured effect: bench/README.md, "LoRA's update in one `addmm`" and "LoRA layers as one autograd function".
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn


class _LoraLinearFunction(torch.autograd.Function):
    """`x W^T + b + scaling * (x A^T) B^T` for a frozen `W`, saving `x` and the rank-r `x A^T` as PEFT's layers do."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):
        flat = x.reshape(-1, x.shape[-1])
        result = torch.addmm(bias, flat, weight.t()) if bias is not None else torch.mm(flat, weight.t())
        down = torch.mm(flat, lora_a.t())
        result.addmm_(down, lora_b.t(), alpha=scaling)
        ctx.save_for_backward(flat, weight, lora_a, lora_b, down)
        ctx.scaling = scaling
        return result.view(*x.shape[:-1], result.shape[-1])

    @staticmethod
    def backward(ctx, grad_output):
        flat, weight, lora_a, lora_b, down = ctx.saved_tensors
        grad = grad_output.reshape(-1, grad_output.shape[-1])
        needs_x, _, needs_bias, needs_a, needs_b, _ = ctx.needs_input_grad
        grad_down = torch.mm(grad, lora_b).mul_(ctx.scaling)
        grad_x = grad_bias = grad_a = grad_b = None
        if needs_x:
            grad_x = torch.mm(grad, weight).addmm_(grad_down, lora_a)
            grad_x = grad_x.view(*grad_output.shape[:-1], grad_x.shape[-1])
        if needs_bias:  # a trained base bias (PEFT's bias="all")
            grad_bias = grad.sum(0)
        if needs_a:
            grad_a = torch.mm(grad_down.t(), flat)
        if needs_b:
            grad_b = torch.mm(down.t(), grad).mul_(ctx.scaling).t()  # r x tokens @ tokens x out: BLAS's fast side
        return grad_x, None, grad_bias, grad_a, grad_b, None


class FusedLoraLinear(LoraLinear):
    """PEFT's `lora.Linear` whose plain-LoRA forward is `_LoraLinearFunction` where it applies, else adds
    `scaling * B(A(x))` to the base output in one `addmm`."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs or not self._fusable(x):
            return super().forward(x, *args, **kwargs)
        name = self._single_function_adapter(x)
        if name is not None:
            base = self.base_layer
            return _LoraLinearFunction.apply(
                x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name]
            )
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

    def _single_function_adapter(self, x: torch.Tensor) -> str | None:
        """The adapter `_LoraLinearFunction` can compute this layer with: the only active one, without dropout, on a
        frozen, hook-free `nn.Linear` and outside autocast; None otherwise."""
        active = [name for name in self.active_adapters if name in self.lora_A]
        base = self.base_layer
        if (
            len(active) != 1
            or type(self.lora_dropout[active[0]]) is not nn.Identity
            or type(base) is not nn.Linear
            or base.weight.requires_grad
            or base._forward_hooks
            or base._forward_pre_hooks
            or torch.is_autocast_enabled(x.device.type)
        ):
            return None
        return active[0]


def fuse_lora_layers(model: nn.Module) -> int:
    """Give every PEFT LoRA linear layer of `model` (exactly `lora.Linear`, not a quantised or other subclass) the
    fused forward; returns how many. Nothing saved or loaded changes: the class keeps PEFT's weights and methods."""
    layers = [module for module in model.modules() if type(module) is LoraLinear]
    for module in layers:
        module.__class__ = FusedLoraLinear
    return len(layers)
