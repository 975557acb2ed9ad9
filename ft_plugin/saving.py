"""Save a trained model as a result folder and load any result folder (or Hub repo) back for inference.

Layouts, by the method's `save_format`:
- `peft` (one PEFT method): a standard PEFT adapter folder, loadable with plain peft.
- `full` (full, freeze): a standard `save_pretrained` model.
- `delta` (adapters, combinations): `delta_model.safetensors` with only the trained weights; loading
  re-applies the method to the base model and fills them in.
All also hold the tokenizer, `config.json` with the label mapping, and `ft_plugin_config.json`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ModelError, first_line
from .methods import METHODS, apply_method, parse_method
from .models import in_new_modules, whole_modules

logger = logging.getLogger("ft_plugin")

FT_PLUGIN_CONFIG = "ft_plugin_config.json"
DELTA_WEIGHTS = "delta_model.safetensors"


def save_format(method: str) -> str:
    specs = parse_method(method)
    return specs[0].save_format if len(specs) == 1 else "delta"


def trained_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights, detached and contiguous (what a delta file holds)."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_result(model: nn.Module, output_dir: str | os.PathLike, tokenizer=None, extra: dict | None = None) -> Path:
    """Save a model returned by `apply_method` (and trained) so that `load` and, where possible, plain
    peft/transformers can load it. Returns the folder.

    Atomic for loaders: the files are written to a temporary folder beside them, the old result's files that the
    new one replaces are moved aside into `.previous-result/`, then the new files are renamed in, weights last,
    so a crash at any point never leaves a folder that loads (a mix of two results, or a partial one). An error
    while moving in puts the previous result back; after a kill it waits in `.previous-result/`.
    """
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=output))
    try:
        _write_result(model, staging, tokenizer, extra)
        move_result_in(staging, output)
    except OSError as error:
        raise ModelError(
            f"Could not save the result in '{output}' ({error.strerror or error}): free disk space or choose a "
            "writable --output_dir; no partial result was left (a previous result there is back in place)."
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


# -- atomic saving (issue 9) -------------------------------------------------------------------------------------
RESULT_MARKERS = (FT_PLUGIN_CONFIG, "adapter_config.json", DELTA_WEIGHTS, "model.safetensors")
PREVIOUS_RESULT = ".previous-result"  # the replaced result's files while a new result moves in


def has_result(folder: str | os.PathLike) -> bool:
    """True if `folder` holds a saved result, or the previous result of an interrupted save (what
    `--overwrite_output_dir` must be given to replace)."""
    folder = Path(folder)
    return (folder / PREVIOUS_RESULT).is_dir() or any((folder / name).is_file() for name in RESULT_MARKERS)


def _is_weights(name: str) -> bool:
    return name.endswith((".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json"))


def _loading_files(output: Path) -> list[Path]:
    """The files that make `output` load: the record, the weights and PEFT's adapter config (a result of another
    layout saved over a PEFT one must not leave its `adapter_config.json`, which loaders would follow)."""
    return [
        output / FT_PLUGIN_CONFIG,
        output / "adapter_config.json",
        *(f for f in output.iterdir() if f.is_file() and _is_weights(f.name)),
    ]


def move_result_in(staging: Path, output: Path) -> None:
    """Move the files the new result replaces into `.previous-result/` (the old result stops loading before any
    new file lands), rename the staged files in, weight indexes and weights last (the folder loads only once the
    last weights file has landed), then drop the previous result. An error on the way puts it back."""
    for leftover in output.glob(".saving-*"):  # staging folders of an earlier crashed save
        if leftover != staging:
            shutil.rmtree(leftover, ignore_errors=True)
    previous = output / PREVIOUS_RESULT
    if previous.is_dir():  # an earlier save was killed mid-way: its previous result is the last complete one
        for stale in _loading_files(output):
            stale.unlink(missing_ok=True)
    else:
        previous.mkdir()
        for old in {*_loading_files(output), *(output / f.name for f in staging.iterdir())}:
            if old.is_file():
                os.replace(old, previous / old.name)
    staged = sorted(staging.iterdir(), key=lambda f: (_is_weights(f.name), not f.name.endswith(".index.json")))
    mode = 0o666 & ~_umask()  # what a plain open() gives; some writers (safetensors via a temp file) leave 0600
    try:
        for file in staged:
            target = output / file.name
            if target.is_dir():
                shutil.rmtree(target)
            if file.is_file():
                os.chmod(file, mode)
            os.replace(file, target)
    except OSError:
        _restore_previous(output)
        raise
    shutil.rmtree(previous)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _restore_previous(output: Path) -> None:
    """Put `.previous-result/` back in place of a new result that did not finish moving in."""
    previous = output / PREVIOUS_RESULT
    for partial in _loading_files(output):
        partial.unlink(missing_ok=True)
    for old in previous.iterdir():
        os.replace(old, output / old.name)
    previous.rmdir()


def interrupted_save_hint(folder: Path) -> str:
    """What to say about a folder that does not load because a save into it was killed, or '' if none was."""
    if not (folder / PREVIOUS_RESULT).is_dir():
        return ""
    return (
        f" A save into it was interrupted; the previous result is kept in '{folder / PREVIOUS_RESULT}': move its "
        "files back to use it, or train again."
    )


def _write_result(model: nn.Module, output: Path, tokenizer=None, extra: dict | None = None) -> None:
    method = model.ft_plugin_method
    layout = save_format(method)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if layout == "peft":
        model.save_pretrained(output, save_embedding_layers=False)  # embeddings are never changed
        base.config.save_pretrained(output)  # label mapping for AutoConfig / plain-peft users
    elif layout == "full":
        model.save_pretrained(output, safe_serialization=True)
    else:
        save_file(trained_state_dict(model), output / DELTA_WEIGHTS, metadata={"format": "pt"})
        base.config.save_pretrained(output)
    if tokenizer is not None:
        tokenizer.save_pretrained(output)
    configs = {name: dataclasses.asdict(config) for name, config in model.ft_plugin_configs.items()}
    record = {
        "method": method,
        "save_format": layout,
        "base_model": base.name_or_path,
        "method_configs": configs,
        "labels": [base.config.id2label[i] for i in range(base.config.num_labels)],
        **(extra or {}),
    }
    (output / FT_PLUGIN_CONFIG).write_text(json.dumps(record, indent=2, default=str) + "\n")
    if layout != "full" and not base.name_or_path:
        logger.warning(
            "The base model has no name_or_path (built in code, not loaded with from_pretrained): the result records "
            "no base model, so load it with model_name_or_path= naming the base it was trained on."
        )


# -- end atomic saving -----------------------------------------------------------------------------------------


def resolve_result(path_or_repo: str, revision: str | None = None) -> Path:
    """A local result folder, or a Hub repo id downloaded with `snapshot_download` (cached) at `revision`."""
    if os.path.isdir(path_or_repo):
        if revision is not None:  # a local folder shadows a Hub id of the same name; ignoring it would mislead
            raise ModelError(
                f"'{path_or_repo}' is a local folder, and a revision applies only to Hub repos: drop --revision "
                "(revision= in Python), or run from another folder to load the Hub repo of that name."
            )
        return Path(path_or_repo)
    if path_or_repo.startswith((".", "/", "~")) or path_or_repo.count("/") != 1:
        raise ModelError(f"Result folder '{path_or_repo}' does not exist: pass a training output folder or a repo id.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        snapshot = Path(snapshot_download(path_or_repo, revision=revision))
        if not any((snapshot / name).is_file() for name in (FT_PLUGIN_CONFIG, "adapter_config.json", "config.json")):
            raise ModelError(
                f"Hub repo '{path_or_repo}' holds no result at revision '{revision or 'main'}': a result pushed to a "
                "branch loads with --revision BRANCH (revision= in Python)."
            )
        return snapshot
    # --- hub (issue 4): name the fix for the usual Hub failures
    except RevisionNotFoundError as error:
        raise ModelError(
            f"Hub repo '{path_or_repo}' has no revision '{revision}': pass an existing branch, tag or commit."
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelError(
            f"Hub repo '{path_or_repo}' was not found: check the id; for a private repo run `hf auth login` or set HF_TOKEN."
        ) from error
    except ModelError:
        raise
    except Exception as error:  # connection, 401, ...: one line for the user
        if getattr(getattr(error, "response", None), "status_code", None) == 401:
            raise ModelError(
                f"The Hub rejected the token while downloading '{path_or_repo}' (401): run `hf auth login` or set HF_TOKEN."
            ) from error
        first = first_line(error)
        raise ModelError(
            f"Could not download '{path_or_repo}' from the Hub ({first}): check the connection (offline, only results "
            "already in the Hugging Face cache load), or pass a local result folder."
        ) from error
    # --- end hub


def read_record(folder: Path) -> dict[str, Any]:
    """`ft_plugin_config.json`, or an equivalent record for plain PEFT adapters and plain models."""
    record_file = folder / FT_PLUGIN_CONFIG
    if record_file.is_file():
        return json.loads(record_file.read_text())
    adapter_config = folder / "adapter_config.json"
    if adapter_config.is_file():
        base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        return {"method": None, "save_format": "peft", "base_model": base}
    if (folder / "config.json").is_file():
        return {"method": None, "save_format": "full", "base_model": str(folder)}
    raise ModelError(
        f"'{folder}' is not an ft-plugin result: it has no {FT_PLUGIN_CONFIG}, adapter_config.json or config.json."
        + interrupted_save_hint(folder)
    )


def load(
    path_or_repo: str | os.PathLike,
    model_name_or_path: str | None = None,
    revision: str | None = None,
    allow_pickle: bool = False,
) -> nn.Module:
    """Load any ft-plugin result (folder or Hub repo) as a model in eval mode, ready for inference.

    `model_name_or_path` overrides the recorded base model (e.g. a local copy of it). Only safetensors weights
    are loaded: pickled `.bin` files can run code, so they need `allow_pickle=True` (`--allow_pickle`, or
    FT_PLUGIN_ALLOW_PICKLE=1).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from .adalora_checkpoint import rank_pattern_false_alarm_silenced
    from .models import load_base_model, pickle_allowed

    folder = resolve_result(str(path_or_repo), revision)
    record = read_record(folder)
    allow_pickle = pickle_allowed(allow_pickle)
    check_weights(folder, record["save_format"], allow_pickle)
    if record["save_format"] == "full":
        model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=not allow_pickle)
        return model.eval()
    if not (folder / "config.json").is_file():
        checkpoint = folder.name.startswith("checkpoint-")
        raise ModelError(
            f"'{folder}' has no config.json (the labels and base model settings): "
            + ("it is a training checkpoint, not a result: load the run's --output_dir, or continue training with "
               "--resume_from_checkpoint." if checkpoint else "load a result folder that ft-plugin saved.")
        )  # fmt: skip
    config = AutoConfig.from_pretrained(folder)
    labels = [config.id2label[i] for i in range(config.num_labels)]
    if not (model_name_or_path or record["base_model"]):  # "" would load the default base model instead
        raise ModelError(
            f"'{folder}' records no base model (saved from a model built in code, which has no name_or_path): pass "
            "the base it was trained on as model_name_or_path= (--model_name_or_path on the command line)."
        )
    base, _ = load_base_model(model_name_or_path or record["base_model"], labels, allow_pickle=allow_pickle)
    _check_same_architecture(base.config, config, folder)
    adalora = "adalora" in str(record.get("method") or "").split("+")
    try:
        with rank_pattern_false_alarm_silenced() if adalora else contextlib.nullcontext():
            if record["save_format"] == "peft":
                from peft import PeftModel

                model = PeftModel.from_pretrained(base, folder)
            else:
                model = _load_delta(base, folder, record)
    except RuntimeError as error:  # size mismatches: an adapter trained on another base model
        raise ModelError(
            f"The adapter in '{folder}' does not fit base model '{base.name_or_path}' ({str(error).splitlines()[0]}): "
            f"load it on the base it was trained on ('{record['base_model']}')."
        ) from error
    return model.eval()


# -- weights checks (issue 9) -------------------------------------------------------------------------------------
WEIGHT_FILES = {"peft": "adapter_model", "full": "model", "delta": "delta_model"}


def check_weights(folder: Path, layout: str, allow_pickle: bool = False) -> None:
    """One-line errors for a result without weights, with only pickled weights, or with a corrupted file."""
    from safetensors import safe_open

    stem = WEIGHT_FILES[layout]
    safetensors = sorted(folder.glob(f"{stem}*.safetensors")) + sorted(folder.glob("pytorch_model*.safetensors"))
    pickled = sorted(folder.glob(f"{stem}*.bin")) + sorted(folder.glob("pytorch_model*.bin"))
    if not safetensors and pickled and not allow_pickle:
        raise ModelError(
            f"'{folder}' has only pickled weights ({pickled[0].name}), which can run code when loaded: convert them "
            "to safetensors, or if you trust the source pass --allow_pickle (allow_pickle=True in Python)."
        )
    if not safetensors and not pickled:
        raise ModelError(
            f"'{folder}' has no weights file ({stem}.safetensors): the result is incomplete (an interrupted save or "
            "download?); train or download it again." + interrupted_save_hint(folder)
        )
    for file in safetensors:
        try:
            with safe_open(str(file), "pt") as weights:
                weights.keys()
        except Exception as error:  # SafetensorError: bad header, truncated data
            raise ModelError(
                f"'{file}' is corrupted ({first_line(error)}): train or download the result again."
            ) from None


# -- end weights checks ------------------------------------------------------------------------------------------


def _check_same_architecture(base_config, saved_config, folder: Path) -> None:
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
    differences = [k for k in keys if getattr(base_config, k, None) != getattr(saved_config, k, None)]
    if differences:
        raise ModelError(
            f"The result in '{folder}' was trained on a different base model (differs in {', '.join(differences)}): "
            "load it on the base it was trained on (see ft_plugin_config.json)."
        )


WRAPPED_WEIGHT = re.compile(r"^(.*)\.(?:original_module|modules_to_save\.([^.]+))\.(weight|bias)$")


def _unwrapped_new_modules(weights: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Delta weights under today's names. Combinations no longer wrap a new module (bert-tiny's pooler) in a PEFT
    copy per member; an earlier result holds those copies. The one its forward pass used is kept: the copy of its
    only member with one (PEFT made that active), else the original module; under the module's own name
    (`pooler.dense.weight`, or `pooler.dense.base_layer.weight` where a method now adapts the pooler too)."""
    current, copies = {}, {}
    for name, tensor in weights.items():
        match = None if name in expected else WRAPPED_WEIGHT.match(name)
        if match is None:
            current[name] = tensor
            continue
        module, adapter, parameter = match.groups()
        copies.setdefault(module, {}).setdefault(adapter or "original", {})[parameter] = tensor
    for module, sources in copies.items():
        members = [adapter for adapter in sources if adapter not in ("original", "default")]
        used = sources[members[0]] if len(members) == 1 else sources.get("original", {})
        for parameter, tensor in used.items():
            name = next(
                (n for n in (f"{module}.{parameter}", f"{module}.base_layer.{parameter}") if n in expected), None
            )
            if name is not None:
                current[name] = tensor
    return current


def _tuner_parameter_parts(model: nn.Module) -> set[str]:
    """The name parts of PEFT tuners' own parameters in `model` (`lora_A`, `beft_bias`...). Missing from an earlier
    result, such a parameter stays at its initial value, which leaves its layer as it was (PEFT initialises every
    tuner as the identity)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {f".{part}." for m in model.modules() if isinstance(m, BaseTunerLayer) for part in m.adapter_layer_names}


def _load_delta(base: nn.Module, folder: Path, record: dict) -> nn.Module:
    configs = record.get("method_configs", {})
    options = {key: value for config in configs.values() for key, value in config.items()}
    specs = parse_method(record["method"])
    for spec in specs:
        if spec.name not in METHODS:
            raise ModelError(f"'{folder}' needs method '{spec.name}', which this ft-plugin does not have.")
    model = apply_method(base, record["method"], **options)
    weights_file = folder / DELTA_WEIGHTS
    if not weights_file.is_file():
        raise ModelError(f"'{folder}' lacks {DELTA_WEIGHTS}: the result is incomplete; train or download it again.")
    expected = set(trained_state_dict(model))
    weights = _unwrapped_new_modules(load_file(weights_file), expected)
    new_modules, whole = getattr(base, "ft_plugin_new_modules", None) or [], whole_modules(base)
    missing = sorted(name for name in expected - set(weights) if not in_new_modules(name, whole))
    tuner_parts = _tuner_parameter_parts(model)
    unsaved = {  # an untrained module an earlier result did not save keeps the checkpoint's weights, as it trained
        name
        for name in expected - set(weights) - set(missing)
        if not any(p in name for p in tuner_parts) and in_new_modules(name, new_modules)
    }
    if unsaved:  # a result saved before ft-plugin trained and saved them
        logger.warning(
            "'%s' predates saving %s, which its base checkpoint lacks: they are drawn at random on each load, so "
            "its predictions vary; train it again for a reproducible result.",
            weights_file,
            ", ".join(new_modules),
        )
    if missing:
        raise ModelError(
            f"'{weights_file}' lacks {len(missing)} trained weights (e.g. {missing[0]}): it does not match."
        )
    model.load_state_dict(weights, strict=False)
    return model
