"""Dropout with cheaper random masks on the CPU (`--cpu_dropout fast`, the default).

torch's CPU dropout draws each element's Bernoulli sample from its own 32-bit Mersenne Twister number
(`bernoulli_`): about 7 ns an element on a 2-core machine, more than a GEMM over the same activations, and with
BERT's hidden dropouts and LoRA's input dropout a fifth of a training step (bench/README.md). `FastDropout` draws
64-bit numbers from the same generator (torch's default one: seeded by `--seed`, saved in checkpoints) and cuts each
into four 16-bit ones: an element is dropped when its number falls in the lowest `round(p * 65536)` of the 65,536
values, and the kept ones are scaled by the exact kept share, so the output's expectation is the input, as with
`nn.Dropout`; only p's quantisation to 1/65536 differs. Like torch, it keeps a one-byte mask for the backward pass.
GPUs keep torch's own dropout (fused there); so does an in-place dropout.
"""

from __future__ import annotations

import torch
from torch import nn

_LEVELS = 1 << 16  # 16-bit random numbers: four from each 64-bit draw


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A boolean mask of `shape` keeping each element with probability ~1 - p, and the exact kept share."""
    count = shape.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
    dropped_levels = round(p * _LEVELS)
    mask = words.view(torch.int16)[:count].view(shape) >= dropped_levels - _LEVELS // 2
    return mask, 1 - dropped_levels / _LEVELS


class _ApplyMask(torch.autograd.Function):
    """`x * mask * scale`, saving only the boolean mask for the backward pass (as `torch.native_dropout` does)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return torch.ops.aten.native_dropout_backward(x, mask, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return torch.ops.aten.native_dropout_backward(grad, mask, ctx.scale), None, None


class FastDropout(nn.Dropout):
    """`nn.Dropout` with ft-plugin's cheaper mask on the CPU; torch's own elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.inplace or x.device.type != "cpu":
            return super().forward(x)
        if self.p == 1:
            return x * 0
        mask, kept = keep_mask(x.shape, self.p, x.device)
        return _ApplyMask.apply(x, mask, 1 / kept)


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every `nn.Dropout` in `model` (the base's and the method's) by a `FastDropout` with the same p and
    mode; returns how many. Dropout has no weights: what is saved and loaded does not change."""
    found = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Dropout
    ]
    for parent, name, child in found:
        parent._modules[name] = FastDropout(child.p, child.inplace).train(child.training)
    return len(found)
