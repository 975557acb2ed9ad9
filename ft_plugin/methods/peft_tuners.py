"""Methods that PEFT implements: LoRA, DoRA, AdaLoRA, IA3, BitFit (PEFT's BEFT), prefix, prompt and p-tuning.

Each is a config dataclass (CLI flags and documented defaults) plus a function returning the PEFT config.
Alone, a method wraps the model with `get_peft_model` and saves a standard PEFT adapter folder that plain
peft loads. Inside a combination, reparameterising tuners are injected in place (`inject_adapter_in_model`)
and a prompt method, if any, wraps the result last.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import peft
from peft import TaskType
from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn

from ..errors import MethodError
from ..models import resolve_model, whole_modules
from .base import MethodConfig, TargetModulesMixin, VirtualTokensMixin, parameters_containing
from .registry import MethodSpec, register_method


@dataclass
class LoraArguments(TargetModulesMixin, MethodConfig):
    """LoRA (Hu et al., 2021) and DoRA (Liu et al., 2024): low-rank updates `W + (alpha/r) B A`.

    Args:
        lora_r: rank of the update. Higher r: more capacity and memory; 8 is plenty for classification.
        lora_alpha: scaling; the update is multiplied by alpha / r. Default 16 (= 2 r).
        lora_dropout: dropout on the LoRA input. Default 0.0, PEFT's (0.1 cost 1.5 accuracy points and 12 MB in
            bench/methods.py, 5 seeds).
        target_modules: default every linear layer of the transformer blocks that reads the hidden state (BERT's
            query, key, value, attention output and feed-forward up projection; `hidden_state_targets`): 0.733
            against 0.709 for PEFT's `query value` and 0.745 for `all-linear` (whose feed-forward down projection
            costs +23 % training memory), 5 seeds in bench/methods.py. Default learning rate 2e-3 (5e-4
            undertrains short runs by ~12 accuracy points).
    """

    prefix = "lora"
    lora_r: int = field(default=8, metadata={"help": "lora/dora/adalora: rank of the low-rank update."})
    lora_alpha: int = field(default=16, metadata={"help": "lora/dora: scaling alpha (update * alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "lora/dora/adalora: dropout on the LoRA input."})

    def __post_init__(self) -> None:
        if self.lora_r < 1:
            raise MethodError(f"--lora_r must be a positive rank, got {self.lora_r} (try 8).")
        if self.lora_alpha <= 0:
            raise MethodError(f"--lora_alpha must be positive, got {self.lora_alpha} (try 2 * r).")
        if not 0 <= self.lora_dropout < 1:
            raise MethodError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}.")


@dataclass
class AdaLoraArguments(TargetModulesMixin, MethodConfig):
    """AdaLoRA (Zhang et al., 2023): LoRA whose rank budget is reallocated during training by importance.

    Args:
        adalora_init_r: starting rank of every matrix. Default 12.
        adalora_target_r: average rank after pruning. Default 4.
        adalora_tinit / adalora_tfinal: warm-up and final fine-tuning steps without rank changes, as a share of
            the total steps (0.1 and 0.2). The total is set from the Trainer's schedule. Default lr 1e-3.
    """

    prefix = "adalora"
    adalora_init_r: int = field(default=12, metadata={"help": "adalora: initial rank."})
    adalora_target_r: int = field(default=4, metadata={"help": "adalora: average target rank."})
    adalora_tinit: float = field(default=0.1, metadata={"help": "adalora: share of steps before pruning starts."})
    adalora_tfinal: float = field(default=0.2, metadata={"help": "adalora: share of final steps without pruning."})
    adalora_total_step: int | None = field(
        default=None, metadata={"help": "adalora: total training steps (set automatically from the schedule)."}
    )

    def __post_init__(self) -> None:
        if not 1 <= self.adalora_target_r <= self.adalora_init_r:
            raise MethodError("AdaLoRA needs 1 <= --adalora_target_r <= --adalora_init_r.")
        if self.adalora_tinit + self.adalora_tfinal >= 1:
            raise MethodError("--adalora_tinit + --adalora_tfinal must be below 1 (they are shares of all steps).")


@dataclass
class IA3Arguments(TargetModulesMixin, MethodConfig):
    """IA3 (Liu et al., 2022): learned vectors rescale keys, values and feed-forward activations.

    Args:
        target_modules: default `key value output.dense` for BERT (PEFT's choice). Default learning rate 3e-3.
    """

    prefix = "ia3"


@dataclass
class BitFitArguments(TargetModulesMixin, MethodConfig):
    """BitFit (Ben Zaken et al., 2022), as PEFT's BEFT: a trainable bias offset on every linear layer.

    Args:
        target_modules: default `query key value dense` (every linear layer of a BERT block). Default lr 1e-3.
    """

    prefix = "bitfit"
    default_targets = ("query", "key", "value", "dense")


@dataclass
class PrefixArguments(VirtualTokensMixin, MethodConfig):
    """Prefix tuning (Li & Liang, 2021): trained key/value prefixes in every attention layer.

    Args:
        num_virtual_tokens: prefix length. Default 20.
        prefix_projection: reparameterise the prefix through an MLP (more stable, more parameters while
            training). Default False. Default learning rate 1e-2.
    """

    prefix = "prefix"
    prefix_projection: bool = field(default=False, metadata={"help": "prefix: reparameterise through an MLP."})
    prefix_encoder_hidden_size: int = field(default=256, metadata={"help": "prefix: MLP hidden size."})


@dataclass
class PromptArguments(VirtualTokensMixin, MethodConfig):
    """Prompt tuning (Lester et al., 2021): trained soft-prompt embeddings prepended to the input.

    Args:
        num_virtual_tokens: prompt length. Default 20.
        prompt_init_text: initialise the prompt from this text's token embeddings (empty: random vocab init).
            Default learning rate 3e-2 (prompt tuning needs large rates).
    """

    prefix = "prompt"
    prompt_init_text: str = field(
        default="Classify the sentiment of this text:", metadata={"help": "prompt: text to initialise the prompt."}
    )


@dataclass
class PTuningArguments(VirtualTokensMixin, MethodConfig):
    """P-tuning (Liu et al., 2021): virtual tokens produced by a small MLP prompt encoder.

    Args:
        num_virtual_tokens: prompt length. Default 20.
        ptuning_encoder_hidden_size: hidden size of the prompt encoder MLP. Default 128. Default lr 1e-2.
    """

    prefix = "ptuning"
    ptuning_encoder_hidden_size: int = field(default=128, metadata={"help": "p_tuning: prompt-encoder MLP size."})


ALL_LINEAR = "all-linear"  # every linear layer but the output one (peft.tuners.tuners_utils)


def sequence_classification(model: nn.Module) -> dict:
    """PEFT options every config here shares: the task, and as `modules_to_save` (beside the head PEFT adds) the
    base modules the checkpoint lacked or never trained (`models.whole_modules`), which must be trained and saved too."""
    whole = whole_modules(model)
    return {"task_type": TaskType.SEQ_CLS, **({"modules_to_save": whole} if whole else {})}


def in_combination(peft_config: peft.PeftConfig, combined: bool) -> peft.PeftConfig:
    """A combination's member trains the new modules (bert-tiny's pooler) as themselves, not as a PEFT copy of its
    own: with a copy per member none was in use once a prompt method wrapped the model (the pooler stayed random)."""
    if combined:
        peft_config.modules_to_save = None
    return peft_config


def _targets(config, default=None) -> dict:
    """PEFT's `target_modules`: name suffixes, or as in PEFT one string (Python API): `all-linear`, or a regular
    expression that whole module names must match."""
    targets = config.target_modules or default
    if isinstance(targets, str):
        return {"target_modules": ALL_LINEAR if targets.lower().replace("_", "-") == ALL_LINEAR else targets}
    if targets and [t.lower().replace("_", "-") for t in targets] == [ALL_LINEAR]:  # PEFT's shorthand, a string
        return {"target_modules": ALL_LINEAR}
    return {"target_modules": list(targets)} if targets else {}


def _after_block_number(name: str) -> str | None:
    """`bert.encoder.layer.3.attention.self.query` -> `attention.self.query`; None outside numbered blocks."""
    parts = name.split(".")
    numbers = [i for i, part in enumerate(parts) if part.isdigit()]
    return ".".join(parts[numbers[-1] + 1 :]) if numbers else None


def hidden_state_targets(model: nn.Module) -> list[str] | None:
    """LoRA's default targets: the linear layers of the numbered transformer blocks whose input is the hidden state
    (as wide as `config.hidden_size`), as name suffixes after the block number (`attention.self.query`,
    `intermediate.dense`; full names where a suffix would also select another layer). Not the feed-forward down
    projection: LoRA would keep its 4x-wide input for backward. None where no block layer reads the hidden state
    (PEFT's default per model type then applies)."""
    width = getattr(getattr(model, "config", None), "hidden_size", None)
    linear = [  # a layer that another method of a combination wrapped already is named as the wrapper (PEFT's)
        (name.removesuffix(".base_layer"), module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    ]
    chosen = [name for name, module in linear if _after_block_number(name) and module.in_features == width]
    if not chosen:
        return None
    suffixes = sorted({_after_block_number(name) for name in chosen})
    selects = peft.LoraConfig(target_modules=suffixes)  # matched by PEFT's own rule
    precise = [name for name, _ in linear if check_target_module_exists(selects, name)] == chosen
    return suffixes if precise else chosen


def _lora(config: LoraArguments, model: nn.Module) -> peft.PeftConfig:
    return peft.LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        **_targets(config, hidden_state_targets(model)), **sequence_classification(model),
    )  # fmt: skip


def _dora(config: LoraArguments, model: nn.Module) -> peft.PeftConfig:
    lora = _lora(config, model)
    lora.use_dora = True
    return lora


def _adalora(config: AdaLoraArguments, model: nn.Module) -> peft.PeftConfig:
    total = config.adalora_total_step or 1000
    return peft.AdaLoraConfig(
        init_r=config.adalora_init_r, target_r=config.adalora_target_r, total_step=total,
        tinit=int(config.adalora_tinit * total), tfinal=int(config.adalora_tfinal * total),
        **_targets(config), **sequence_classification(model),
    )  # fmt: skip


def _ia3(config: IA3Arguments, model: nn.Module) -> peft.PeftConfig:
    targets = _targets(config)
    if targets and isinstance(targets["target_modules"], list):  # feed-forward modules: a subset of the targets
        targets["feedforward_modules"] = [t for t in targets["target_modules"] if "output" in t or "fc" in t]
    return peft.IA3Config(**targets, **sequence_classification(model))


def _bitfit(config: BitFitArguments, model: nn.Module) -> peft.PeftConfig:
    return peft.BeftConfig(**_targets(config, BitFitArguments.default_targets), **sequence_classification(model))


def prompt_dimensions(model: nn.Module, token_dim: int | None = None) -> dict:
    """The sizes a PEFT prompt method reads from the model's config dict, taken from the model itself: PEFT looks
    for `hidden_size`, `num_hidden_layers` and `num_attention_heads` by name and misses DistilBERT's aliases for them
    (`dim`, `n_layers`, `n_heads`). `token_dim`: the virtual tokens' width, by default the word embeddings' (prompts
    enter as input tokens; ALBERT's are narrower than its hidden size); prefix tuning passes the attention's."""
    config = model.config
    sizes = {
        "token_dim": token_dim or model.get_input_embeddings().embedding_dim,
        "num_layers": getattr(config, "num_hidden_layers", None),
        "num_attention_heads": getattr(config, "num_attention_heads", None),
    }
    return {name: size for name, size in sizes.items() if isinstance(size, int)}


def takes_past_key_values(model: nn.Module) -> bool:
    """Whether the model (or its backbone) takes `past_key_values`, where PEFT's prefix tuning puts its prefixes."""
    modules = [model, getattr(model, "base_model", model)]
    return any("past_key_values" in inspect.signature(module.forward).parameters for module in modules)


def _prefix(config: PrefixArguments, model: nn.Module) -> peft.PeftConfig:
    if not takes_past_key_values(model):  # PEFT says so only at the first forward pass
        raise MethodError(
            f"Prefix tuning passes its prefixes to the attention as past key values, which {type(model).__name__} "
            "does not take: choose another method (prompt, p_tuning or lora)."
        )
    return peft.PrefixTuningConfig(
        num_virtual_tokens=config.num_virtual_tokens, prefix_projection=config.prefix_projection,
        encoder_hidden_size=config.prefix_encoder_hidden_size,
        **prompt_dimensions(model, getattr(model.config, "hidden_size", None)),  # keys and values: the attention's width
        **sequence_classification(model),
    )  # fmt: skip


def _prompt(config: PromptArguments, model: nn.Module) -> peft.PeftConfig:
    init = {}
    if config.prompt_init_text:
        if not model.name_or_path:  # built from a config: no tokenizer to read the text with
            raise MethodError(
                "Prompt tuning starts from the tokens of --prompt_init_text, and this model (built in code) names no "
                'tokenizer: load it with from_pretrained, or pass prompt_init_text="" for a random start.'
            )
        init = {
            "prompt_tuning_init": peft.PromptTuningInit.TEXT,
            "prompt_tuning_init_text": config.prompt_init_text,
            # a packaged base's own folder: the Hub id would make transformers try the Hub (~90 s of retries offline)
            "tokenizer_name_or_path": resolve_model(model.name_or_path).path,
        }
    return peft.PromptTuningConfig(
        num_virtual_tokens=config.num_virtual_tokens,
        **init,
        **prompt_dimensions(model),
        **sequence_classification(model),
    )


def _ptuning(config: PTuningArguments, model: nn.Module) -> peft.PeftConfig:
    return peft.PromptEncoderConfig(
        num_virtual_tokens=config.num_virtual_tokens, encoder_hidden_size=config.ptuning_encoder_hidden_size,
        **prompt_dimensions(model), **sequence_classification(model),
    )  # fmt: skip


def linear_layer_names(model: nn.Module) -> list[str]:
    """The distinct last name parts of the model's linear layers (what `target_modules` matches), less those of the
    new classification head (`classifier`, RoBERTa's `classifier.out_proj`...: trained and saved whole, never adapted)."""
    from ..models import HEAD_MODULES

    heads = set(HEAD_MODULES)
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return sorted({name.rpartition(".")[2] for name in linear if not heads & set(name.split("."))})


def peft_apply(make_config: Callable[[object, nn.Module], peft.PeftConfig]):
    """`apply` for a PEFT method: wrap alone, inject in place inside a combination (prompt methods always wrap)."""

    def apply(model: nn.Module, config: object, combined: bool) -> nn.Module:
        peft_config = in_combination(make_config(config, model), combined)
        try:
            if combined and not peft_config.is_prompt_learning:
                adapter_name = type(peft_config).__name__.removesuffix("Config").lower()
                return peft.inject_adapter_in_model(peft_config, model, adapter_name=adapter_name)
            wrapped = peft.get_peft_model(model, peft_config)
        except ValueError as error:  # PEFT's messages for unmatched target modules are long and multi-line
            first = str(error).strip().splitlines()[0]
            hint = (
                ""
                if peft_config.is_prompt_learning
                else " Pass --target_modules with names of its linear layers: "
                f"{', '.join(linear_layer_names(model))} (or all-linear)."
            )
            raise MethodError(f"{type(peft_config).__name__} cannot be applied to this model: {first}{hint}") from error
        if getattr(peft_config, "tokenizer_name_or_path", None):  # the saved config names the base as it is shared
            wrapped.peft_config["default"].tokenizer_name_or_path = model.name_or_path
        return wrapped

    return apply


PEFT_METHODS = [
    # name, family, config, peft config, markers of trained weights, slot, lr, combinable, description
    ("lora", "reparameterised", LoraArguments, _lora, ("lora_",), "reparameterised", 2e-3, True,
     "LoRA: low-rank updates of the layers that read the hidden state."),
    ("dora", "reparameterised", LoraArguments, _dora, ("lora_",), "reparameterised", 2e-3, True,
     "DoRA: LoRA with a learned magnitude per output (weight-decomposed)."),
    ("adalora", "reparameterised", AdaLoraArguments, _adalora, ("lora_",), "reparameterised", 1e-2, False,
     "AdaLoRA: LoRA with importance-based rank allocation during training."),
    ("ia3", "additive", IA3Arguments, _ia3, ("ia3_l",), "reparameterised", 3e-3, True,
     "IA3: learned rescaling vectors on keys, values and feed-forward activations."),
    ("bitfit", "selective", BitFitArguments, _bitfit, ("beft_bias",), "bias", 5e-3, True,
     "BitFit (PEFT BEFT): train a bias offset of every linear layer."),
    ("prefix", "prompt", PrefixArguments, _prefix, ("prompt_encoder",), "prompt", 1e-2, True,
     "Prefix tuning: trained key/value prefixes in every attention layer."),
    ("prompt", "prompt", PromptArguments, _prompt, ("prompt_encoder",), "prompt", 3e-2, True,
     "Prompt tuning: trained soft-prompt embeddings before the input."),
    ("p_tuning", "prompt", PTuningArguments, _ptuning, ("prompt_encoder",), "prompt", 1e-2, True,
     "P-tuning: virtual tokens from a small MLP prompt encoder."),
]  # fmt: skip

for name, family, config_cls, make, markers, slot, lr, combinable, description in PEFT_METHODS:
    register_method(
        MethodSpec(
            name=name,
            family=family,
            config_cls=config_cls,
            apply=peft_apply(make),
            trainable=parameters_containing(*markers),
            slot=slot,
            save_format="peft",
            learning_rate=lr,
            description=description,
            combinable=combinable,
        )
    )
