"""Attention-probability dropout with ft-plugin's cheaper masks on the CPU (`--cpu_dropout fast`, the default).

On the CPU, PyTorch's fused attention kernel has no dropout: with BERT's `attention_probs_dropout_prob` 0.1,
`scaled_dot_product_attention` takes its math path while training, draws the mask with `bernoulli_` and keeps the
softmax output, the mask and the dropped-out probabilities (batch x heads x length x length each, per layer) for the
backward pass. `sdpa_with_fast_dropout`, registered with transformers' `AttentionInterface` as
`ATTENTION_IMPLEMENTATION`, computes the same function in one `torch.autograd.Function`: the mask comes from
`keep_mask` (as `FastDropout`'s), and only the softmax output and the one-byte mask are kept; the dropped-out
probabilities are recomputed in the backward pass. (A query row whose keys are all masked averages the values, as
transformers' eager attention does, where SDPA gives 0: padding rows of left-padded causal models only.) Everywhere
else (evaluation, no dropout, GPUs, `torch.compile`, causal or grouped-query attention, other dtypes, learned or
unusually shaped masks) it is transformers' own SDPA function, unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from .dropout import apply_keep_mask, has_fast_mask, keep_mask
from .models import ATTENTION_DROPOUT_KEYS

ATTENTION_IMPLEMENTATION = "ft_plugin_sdpa"  # SDPA, with `keep_mask` dropout when training on the CPU


class _DroppedAttention(torch.autograd.Function):
    """`dropout(softmax(q k^T * scaling + mask)) @ v` for (batch, heads, length, head size) tensors, keeping the
    softmax output and the boolean mask for the backward pass."""

    @staticmethod
    def forward(ctx, query, key, value, attention_mask, p: float, scaling: float):
        # The heads arrive as transposed views; made contiguous once here, the matmuls below and in backward
        # need no copies of their own. The scaling goes to the smaller tensor, not the scores.
        scaled_query = torch.mul(query, scaling, out=torch.empty(query.shape, dtype=query.dtype, device=query.device))
        key, value = key.contiguous(), value.contiguous()
        scores = torch.matmul(scaled_query, key.transpose(-1, -2))
        if attention_mask is not None:
            scores.add_(additive_mask(attention_mask, scores.dtype))
        probs = torch.softmax(scores, dim=-1)
        del scores
        keep, kept = keep_mask(probs.shape, p, probs.device)
        output = torch.matmul(apply_keep_mask(probs, keep, 1 / kept), value)
        ctx.save_for_backward(scaled_query, key, value, probs, keep)
        ctx.scale, ctx.scaling = 1 / kept, scaling
        return output

    @staticmethod
    def backward(ctx, grad_output):
        scaled_query, key, value, probs, keep = ctx.saved_tensors
        grad_output = grad_output.contiguous()  # a transposed view: copied once, not in each matmul
        grad_value = torch.matmul(apply_keep_mask(probs, keep, ctx.scale).transpose(-1, -2), grad_output)
        grad_probs = apply_keep_mask(torch.matmul(grad_output, value.transpose(-1, -2)), keep, ctx.scale)
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        del grad_probs
        grad_query = torch.matmul(grad_scores, key).mul_(ctx.scaling)
        grad_key = torch.matmul(grad_scores.transpose(-1, -2), scaled_query)
        return grad_query, grad_key, grad_value, None, None, None


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True: attend) as the float one eager attention adds: 0 or the dtype's minimum, so a row
    whose keys are all masked averages the values instead of giving NaN. Adding this (batch, 1, 1, keys) tensor
    is ~8x faster on the CPU than `masked_fill_` with the boolean one, for the same scores."""
    if attention_mask.dtype != torch.bool:
        return attention_mask
    additive = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
    return additive.masked_fill_(~attention_mask, torch.finfo(dtype).min)


def _takes_fast_dropout(module: nn.Module, query, key, attention_mask, dropout: float, is_causal, kwargs) -> bool:
    """Whether this call is CPU training with dropout in the plain bidirectional form `_DroppedAttention` computes."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    scores_shape = (*query.shape[:-1], key.shape[-2])
    return (
        has_fast_mask(dropout)
        and query.device.type == "cpu"
        and query.dtype == torch.float32
        and not torch.compiler.is_compiling()
        and not (causal and attention_mask is None)
        and query.shape[:2] == key.shape[:2]  # same batch, no grouped-query attention
        and (attention_mask is None or fits_in_place(attention_mask, scores_shape))
        and not kwargs.get("output_attentions")
        and not any(kwargs.get(name) is not None for name in ("position_bias", "cache", "softcap"))
    )


def fits_in_place(attention_mask: torch.Tensor, scores_shape: tuple[int, ...]) -> bool:
    """Whether the mask can be applied to the scores in place: a constant that broadcasts to their shape."""
    try:
        return (
            not attention_mask.requires_grad
            and torch.broadcast_shapes(attention_mask.shape, scores_shape) == scores_shape
        )
    except RuntimeError:  # shapes that do not broadcast: SDPA's own message
        return False


def sdpa_with_fast_dropout(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention function, with `keep_mask` dropout when training on the CPU."""
    if not _takes_fast_dropout(module, query, key, attention_mask, dropout, is_causal, kwargs):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    output = _DroppedAttention.apply(query, key, value, attention_mask, dropout, scaling)
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_IMPLEMENTATION, sdpa_with_fast_dropout)
AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, sdpa_mask)  # the masks SDPA gets


def use_fast_attention_dropout(model: nn.Module) -> bool:
    """Switch a model that attends with SDPA and has attention dropout to `ATTENTION_IMPLEMENTATION`; returns whether
    it did. Only the in-memory choice changes: `save_pretrained` writes no attention implementation."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if not any(getattr(config, key, 0) for key in ATTENTION_DROPOUT_KEYS):
        return False
    base.set_attn_implementation(ATTENTION_IMPLEMENTATION)
    return base.config._attn_implementation == ATTENTION_IMPLEMENTATION
