"""Dropout with cheaper random masks on the CPU (`--cpu_dropout fast`, the default).

torch's CPU dropout draws each element's Bernoulli sample from its own 32-bit Mersenne Twister number
(`bernoulli_`): about 7 ns an element on a 2-core machine, more than a GEMM over the same activations, and with
BERT's hidden dropouts and LoRA's input dropout a fifth of a training step (bench/README.md). `FastDropout` cuts
64-bit random numbers into four 16-bit ones: an element is dropped when its number falls in the lowest
`round(p * 65536)` of the 65,536 values, and the kept ones are scaled by the exact kept share, so the output's
expectation is the input, as with `nn.Dropout`; only p's quantisation to 1/65536 differs. The 64-bit numbers come
from numpy's PCG64 (~3x faster than torch's `random_`), seeded for each mask by one number drawn from torch's default
generator, so `--seed` and checkpoints reproduce the masks as they do torch's. Like torch, it keeps a one-byte mask
for the backward pass, and applies it as bytes (torch casts a bool mask element by element, ~3x slower).
GPUs keep torch's own dropout (fused there); so do an in-place dropout, `torch.compile` (which fuses its own) and
a p within 1/131072 of 0 or 1.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

_LEVELS = 1 << 16  # 16-bit random numbers: four from each 64-bit draw


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> tuple[torch.Tensor, float]:
    """A boolean mask of `shape` keeping each element with probability ~1 - p, and the exact kept share."""
    count = shape.numel()
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))  # torch's default generator decides the mask
    words = np.random.PCG64(seed).random_raw((count + 3) // 4).view(np.int16)
    dropped_levels = round(p * _LEVELS)
    keep = np.greater_equal(words[:count], dropped_levels - _LEVELS // 2)  # numpy's compare: ~2.5x torch's here
    return torch.from_numpy(keep).view(shape).to(device), 1 - dropped_levels / _LEVELS


def has_fast_mask(p: float) -> bool:
    """Whether `keep_mask` can draw a mask for `p`: some elements dropped, some kept after rounding to 1/65536."""
    return 0 < round(p * _LEVELS) < _LEVELS


def apply_keep_mask(x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """`x * mask * scale` for a boolean `mask`, multiplying by its bytes (a bool operand is cast element by element)."""
    return torch.mul(x, mask.view(torch.uint8)).mul_(scale)


class _ApplyMask(torch.autograd.Function):
    """`x * mask * scale`, saving only the boolean mask for the backward pass (as `torch.native_dropout` does)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return apply_keep_mask(x, mask, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return apply_keep_mask(grad, mask, ctx.scale), None, None


class FastDropout(nn.Dropout):
    """`nn.Dropout` with ft-plugin's cheaper mask on the CPU; torch's own elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = self.training and has_fast_mask(self.p) and not self.inplace and x.device.type == "cpu"
        if not fast or torch.compiler.is_compiling():
            return super().forward(x)
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
