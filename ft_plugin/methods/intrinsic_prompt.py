"""Intrinsic prompt tuning (Qin et al., 2021): the soft prompt lives in a low-dimensional subspace.

The prompt is `P0 + reshape(z @ A)`: `z` (dimension `intrinsic_dim`, e.g. 64) is trained; `A` is a fixed random
projection up to `num_virtual_tokens x hidden`, or trained too with `--intrinsic_train_projection` (closer to the
paper's learned projection); `P0` is a fixed start prompt taken from the base model's vocabulary. It reuses
PEFT's prompt tuning for everything else, so a trained adapter is saved as a standard PEFT prompt-tuning
adapter (the projected prompt) that plain peft loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import peft
import torch
from torch import Tensor, nn

from ..errors import MethodError
from .base import MethodConfig, VirtualTokensMixin, parameters_containing
from .peft_tuners import in_combination, prompt_dimensions, sequence_classification
from .registry import MethodSpec, register_method


@dataclass
class IntrinsicPromptArguments(VirtualTokensMixin, MethodConfig):
    """Intrinsic prompt tuning.

    Args:
        intrinsic_dim: dimension of the trained subspace. Default 64: a few hundred times fewer trained
            weights than prompt tuning.
        intrinsic_train_projection: also train the projection (many more trained weights). Default False.
        intrinsic_seed: seed of the fixed projection and start prompt. Default 0. Default learning rate 1e-1.
    """

    prefix = "intrinsic"
    intrinsic_dim: int = field(default=64, metadata={"help": "intrinsic_prompt: dimension of the trained subspace."})
    intrinsic_train_projection: bool = field(
        default=False, metadata={"help": "intrinsic_prompt: train the up-projection too."}
    )
    intrinsic_seed: int = field(default=0, metadata={"help": "intrinsic_prompt: seed of the fixed projection."})

    def __post_init__(self) -> None:
        if self.intrinsic_dim < 1 or self.num_virtual_tokens < 1:
            raise MethodError("--intrinsic_dim and --num_virtual_tokens must be positive.")


class IntrinsicPromptEmbedding(nn.Module):
    """Stands in for the `nn.Embedding` inside PEFT's `PromptEmbedding`: row `i` is virtual token `i`."""

    def __init__(self, word_embeddings: nn.Embedding, config: IntrinsicPromptArguments) -> None:
        super().__init__()
        tokens, hidden = config.num_virtual_tokens, word_embeddings.embedding_dim
        generator = torch.Generator().manual_seed(config.intrinsic_seed)
        start_ids = torch.randint(0, word_embeddings.num_embeddings, (tokens,), generator=generator)
        projection = torch.randn(config.intrinsic_dim, tokens * hidden, generator=generator)
        projection *= word_embeddings.weight.std().item() / math.sqrt(config.intrinsic_dim)
        self.register_buffer("start", word_embeddings.weight.detach()[start_ids].clone(), persistent=False)
        if config.intrinsic_train_projection:
            self.projection = nn.Parameter(projection)
        else:
            self.register_buffer("projection", projection, persistent=False)
        self.intrinsic_z = nn.Parameter(torch.zeros(config.intrinsic_dim))
        # what a loaded prompt holds beyond the subspace (zero unless the projection was trained), so that loading
        # a checkpoint gives back its prompt exactly
        self.register_buffer("residual", torch.zeros_like(self.start), persistent=False)

    @property
    def weight(self) -> Tensor:
        return self.start + (self.intrinsic_z @ self.projection).view_as(self.start) + self.residual

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Load PEFT's saved form, the projected prompt (`weight`: what checkpoints and results hold, e.g. for
        `--resume_from_checkpoint` and `--load_best_model_at_end`): `z` is its least-squares coordinates in the
        subspace (exact with the fixed projection), and what lies outside goes to `residual`."""
        prompt = state_dict.pop(prefix + "weight", None)
        if prompt is not None and prefix + "intrinsic_z" not in state_dict:
            with torch.no_grad():
                offset = (prompt.to(self.start) - self.start).reshape(-1, 1)
                z = torch.linalg.lstsq(self.projection.T, offset).solution.reshape(-1)
                self.residual.copy_((offset.reshape(-1) - z @ self.projection).view_as(self.start))
            state_dict[prefix + "intrinsic_z"] = z
            if isinstance(self.projection, nn.Parameter):
                state_dict[prefix + "projection"] = self.projection.detach()
        elif prefix + "intrinsic_z" in state_dict:  # the subspace form: nothing lies outside it
            self.residual.zero_()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, indices: Tensor) -> Tensor:
        return self.weight[indices]


def add_intrinsic_prompt(model: nn.Module, config: IntrinsicPromptArguments, combined: bool) -> nn.Module:
    """Wrap with PEFT prompt tuning, then swap its prompt table for the low-dimensional parameterisation."""
    word_embeddings = model.get_input_embeddings()
    prompt_config = peft.PromptTuningConfig(
        num_virtual_tokens=config.num_virtual_tokens, **prompt_dimensions(model), **sequence_classification(model)
    )
    prompt_config = in_combination(prompt_config, combined)
    peft_model = peft.get_peft_model(model, prompt_config)
    prompt = IntrinsicPromptEmbedding(word_embeddings, config).to(word_embeddings.weight.device)
    peft_model.prompt_encoder[peft_model.active_adapter].embedding = prompt
    return peft_model


register_method(
    MethodSpec(
        name="intrinsic_prompt",
        family="prompt",
        config_cls=IntrinsicPromptArguments,
        apply=add_intrinsic_prompt,
        trainable=parameters_containing("intrinsic_z", "prompt_encoder.default.embedding.projection"),
        slot="prompt",
        save_format="peft",
        learning_rate=1e-1,
        description="Intrinsic prompt tuning: a soft prompt trained in a low-dimensional subspace.",
    )
)
