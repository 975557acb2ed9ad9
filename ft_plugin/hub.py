"""Push a result folder to the Hugging Face Hub with its model card, or export it (optionally merged) to a folder.

    ft-plugin push outputs/lora --repo_id me/lora-tweets [--private] [--revision dev] [--merged]
    ft-plugin export outputs/lora --merged --to merged/          # a standalone transformers model
    python recipes/lora_bert.py --push_to_hub --hub_model_id me/lora-tweets   # push when training ends

What goes up is what users need and nothing else: the adapter (or the full model), tokenizer, `config.json`
with the label mapping, `ft_plugin_config.json`, the Trainer's results and a generated `README.md` card. Never
checkpoints, `training_args.bin` (it pickles `hub_token`) or TensorBoard runs. The token comes from
`HF_TOKEN` or `hf auth login` and is never printed nor written anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .errors import FtPluginError
from .saving import DELTA_WEIGHTS, FT_PLUGIN_CONFIG, move_result_in

logger = logging.getLogger("ft_plugin")

# Top-level files of a result folder that are pushed (everything else stays local).
PUSHED_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".tiktoken")
# The weights each save format must hold; a folder without them is incomplete.
WEIGHT_FILES = {
    "peft": ("adapter_model.safetensors",),
    "full": ("model.safetensors", "model.safetensors.index.json"),
    "delta": (DELTA_WEIGHTS,),
}
# Result files copied beside a merged model, so its card still shows the run's results.
RESULT_FILES = (
    "all_results.json",
    "train_results.json",
    "eval_results.json",
    "test_results.json",
    "trainer_state.json",
)
PUSH_ATTEMPTS = 3  # the commit request is sent once by the client: retry server errors here


class HubError(FtPluginError):
    """A push or export that cannot be done; the local result folder is never changed."""


def check_result(output_dir: str | os.PathLike) -> dict:
    """The result's `ft_plugin_config.json`, after checking the folder is a complete ft-plugin result."""
    folder = Path(output_dir)
    record_file = folder / FT_PLUGIN_CONFIG
    if not record_file.is_file():
        raise HubError(
            f"'{folder}' is not an ft-plugin result folder (no {FT_PLUGIN_CONFIG}): pass the --output_dir of a "
            "finished training run."
        )
    record = json.loads(record_file.read_text())
    if not any((folder / name).is_file() for name in WEIGHT_FILES[record["save_format"]]):
        raise HubError(
            f"'{folder}' lacks its weights ({' or '.join(WEIGHT_FILES[record['save_format']])}): the run did not "
            "finish saving; train again."
        )
    return record


def export_result(
    output_dir: str | os.PathLike,
    target_dir: str | os.PathLike,
    repo_id: str | None = None,
    revision: str | None = None,
    merged: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write what a push uploads into `target_dir`: copies of the result's files (or a merged standalone model)
    and the model card `README.md`. `output_dir` is only read; a `target_dir` that is not empty needs `overwrite`."""
    from .card import is_hub_id, render_card

    folder, target = Path(output_dir), Path(target_dir).resolve()  # '.', '..' and links: the folder they name
    record = check_result(folder)
    if target == folder.resolve():
        raise HubError(f"Export to a folder other than the result '{folder}' itself (--to).")
    if target.exists() and not target.is_dir():
        raise HubError(f"--to '{target_dir}' is a file: choose a new or empty folder.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise HubError(f"--to '{target}' is not empty: choose a new or empty folder, or pass --overwrite.")
    merge = merged and record["save_format"] != "full"
    if merge:
        _check_mergeable(record)
    elif not is_hub_id(record.get("base_model")) and record["save_format"] != "full":
        merged_too = "" if unmergeable_methods(record) else ", or export a standalone model with --merged"
        raise HubError(
            f"'{folder}' was trained on the local model '{record.get('base_model')}', which other users cannot "
            f"download: train on a Hub model id{merged_too}."
        )
    # a new folder is written beside its place and renamed in whole: a crash or kill leaves no half-written export;
    # into an existing folder (empty, or with --overwrite) the files move in, weights last, and a result there is
    # replaced whole (its adapter config and weights would still load beside a merged model); other files stay
    existing = target.is_dir()
    staging = (target / ".exporting") if existing else target.with_name(f".{target.name}.exporting")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed export
    staging.mkdir(parents=True)
    try:
        if merge:
            _write_merged(folder, staging, record)
        else:
            for path in sorted(folder.iterdir()):
                if path.is_file() and path.suffix in PUSHED_SUFFIXES:
                    shutil.copy2(path, staging / path.name)  # a copy: editing the export leaves the result as it was
        _without_local_paths(staging)
        card = render_card(staging, repo_id=repo_id or f"your-name/{target.name}", revision=revision)  # not staging's
        card.save(staging / "README.md")
        if existing:  # as a training result moves in: the files of a result already there stop loading first
            move_result_in(staging, target)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def unmergeable_methods(record: dict) -> list[str]:
    """The methods of a result that cannot merge into a plain transformers model: bottleneck adapters and prompts
    are modules or virtual tokens of their own; reparameterisations (LoRA, DoRA, AdaLoRA, IA3, BEFT) and weights
    trained in place merge."""
    from .methods import parse_method

    return [spec.name for spec in parse_method(record["method"]) if spec.slot in ("adapter", "prompt")]


def _check_mergeable(record: dict) -> None:
    from .card import is_hub_id

    unmergeable = unmergeable_methods(record)
    if unmergeable:
        fix = (
            "push or export it without --merged"
            if is_hub_id(record.get("base_model"))
            else f"and its base model '{record.get('base_model')}' is local, so to share it train on a Hub model id"
        )
        raise HubError(
            f"Method '{record['method']}' adds {' and '.join(unmergeable)}, which cannot be merged into the base "
            f"weights: {fix}."
        )


def _write_merged(folder: Path, target: Path, record: dict) -> None:
    """Merge a PEFT reparameterisation (LoRA, DoRA, IA3, BEFT, combinations of them) into the base weights and
    save a plain transformers model, checked by reloading it with `AutoModelForSequenceClassification`."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .inference import merge_adapters
    from .saving import load

    model = load(folder)
    merged = merge_adapters(model).eval()
    merged.save_pretrained(target, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.save_pretrained(target)
    for name in RESULT_FILES:
        if (folder / name).is_file():
            shutil.copy2(folder / name, target / name)
    merged_record = {**record, "save_format": "full", "merged_from": record["method"]}
    (target / FT_PLUGIN_CONFIG).write_text(json.dumps(merged_record, indent=2) + "\n")

    inputs = tokenizer(["a check sentence"], return_tensors="pt")
    reloaded = AutoModelForSequenceClassification.from_pretrained(target, use_safetensors=True).eval()
    with torch.no_grad():
        if not torch.allclose(reloaded(**inputs).logits, merged(**inputs).logits, atol=1e-4):
            raise HubError(
                f"Method '{record['method']}' left weights outside the standard architecture after merging: "
                "push or export it without --merged."
            )


def _without_local_paths(target: Path) -> None:
    """The exported record and trainer state with file names instead of this machine's paths (they name users'
    home folders and projects; the card already shows only file names)."""
    record_path, state_path = target / FT_PLUGIN_CONFIG, target / "trainer_state.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        data = record.get("data") or {}
        for key, value in data.items():
            if key.endswith("_file") and value:
                data[key] = Path(value).name
                record["local_data"] = True  # names, not paths: `ft-plugin evaluate` asks for --test_file
        if data.get("dataset_name") and os.path.isabs(data["dataset_name"]):  # a local dataset folder
            data["dataset_name"] = record["dataset"] = Path(data["dataset_name"]).name
            record["local_data"] = True
        if record.get("dataset") and (data.get("train_file") or os.path.isabs(record["dataset"])):
            record["dataset"] = Path(record["dataset"]).name
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if state.get("best_model_checkpoint"):
            state["best_model_checkpoint"] = Path(state["best_model_checkpoint"]).name
        state_path.write_text(json.dumps(state, indent=2) + "\n")


NO_TOKEN = "No Hugging Face token: run `hf auth login` or set HF_TOKEN to a token with write access"


def check_push(repo_id: str, token: str | None = None, base_model: str | None = None) -> str:
    """What a push needs that can be checked before any work (a recipe checks it before training): a valid repo id,
    a token (`token`, else the environment's or login's; returned), and, where `base_model` is given, a base that
    other users can download. One-line `HubError`s otherwise."""
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from .card import is_hub_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HubError(
            f"'{repo_id}' is not a valid Hub repo id: use 'your-name/model-name' (letters, digits, '-', '_', '.')."
        ) from None
    if base_model is not None and not is_hub_id(base_model):
        raise HubError(
            f"--push_to_hub needs a base model other users can download, and '{base_model}' is not a Hub model: "
            "train on a Hub model id, or train without --push_to_hub and push a standalone model with "
            "`ft-plugin push DIR --repo_id ID --merged`."
        )
    token = token or get_token()
    if not token:
        raise HubError(f"{NO_TOKEN}.")
    return token


def push_command(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
                 merged: bool = False) -> str:  # fmt: skip
    """The `ft-plugin push` command line that pushes `folder` as asked (for "push it later" messages)."""
    flags = [
        " --private" if private else "",
        f" --revision {revision}" if revision else "",
        " --merged" if merged else "",
    ]
    return f"ft-plugin push {folder} --repo_id {repo_id}{''.join(flags)}"


def push_result(
    output_dir: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    merged: bool = False,
) -> str:
    """Push a result folder (with its model card) to the Hub repo `repo_id`; returns the commit URL.

    Creates the repo (private if asked) and the branch `revision` if they do not exist. Files of an earlier push
    that this result no longer has are deleted in the same commit, so the repo always mirrors one result.
    Errors are `HubError`s with one-line messages; the local folder is never changed.
    """
    from huggingface_hub import HfApi, get_token

    folder = Path(output_dir)
    record = check_result(folder)
    command = push_command(folder, repo_id, private, revision, merged)
    later = f"the result is still in '{folder}'; push it later with `{command}`"
    token = token or get_token()
    if not token:  # the one check whose fix leaves the command as it is
        raise HubError(f"{NO_TOKEN}; {later}.")
    check_push(repo_id, token)
    api = HfApi(token=token)
    if "/" not in repo_id:  # a bare name goes to the token owner's namespace, as `create_repo` does
        with _hub_errors(repo_id, later):
            repo_id = f"{api.whoami()['name']}/{repo_id}"
    message = commit_message or f"Upload {record['method']} {'merged model' if merged else 'result'} (ft-plugin)"
    with tempfile.TemporaryDirectory(prefix="ft-plugin-push-") as staging:
        export_result(folder, staging, repo_id=repo_id, revision=revision, merged=merged)  # before creating the repo
        with _hub_errors(repo_id, later):
            api.create_repo(repo_id, private=private, exist_ok=True)
            if private and not api.repo_info(repo_id).private:  # `create_repo` leaves an existing repo public
                api.update_repo_settings(repo_id, private=True)
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            commit = _retry(
                lambda: api.upload_folder(
                    repo_id=repo_id, folder_path=staging, revision=revision, commit_message=message,
                    delete_patterns="*",  # what an earlier push had and this result has not (keeps .gitattributes)
                )
            )  # fmt: skip
    logger.info("Pushed '%s' to %s", folder, commit.commit_url)
    return commit.commit_url


def hub_repo_id(training_args) -> str:
    """The repo `--push_to_hub` pushes to: `--hub_model_id`, else the output folder's name (the Trainer's rule)."""
    return training_args.hub_model_id or Path(training_args.output_dir).resolve().name


def check_push_before_training(method: str, model_name_or_path: str | None, training_args) -> None:
    """`--push_to_hub`'s repo id, token and base model, checked before the data and model load (a refusal after
    training cost the whole run's time)."""
    from .models import resolve_model
    from .saving import save_format

    standalone = save_format(method) == "full"  # a full model needs no base model on the Hub
    base = None if standalone else resolve_model(model_name_or_path).name
    check_push(hub_repo_id(training_args), training_args.hub_token, base_model=base)


def push_after_training(training_args, token: str | None = None) -> str:
    """`--push_to_hub` at the end of a recipe (main process, after the result is saved), with `--hub_token`'s
    value as `token` (the Trainer's own arguments no longer carry it) or else the environment's or login's."""
    repo_id = hub_repo_id(training_args)
    url = push_result(
        training_args.output_dir,
        repo_id,
        token=token,
        private=bool(training_args.hub_private_repo),
        revision=training_args.hub_revision,
    )
    print(f"Pushed to the Hub: {url}")
    return url


def _retry(push: Callable, attempts: int = PUSH_ATTEMPTS, wait_s: float = 1.0):
    """Run `push` again after a server error (5xx); other errors are raised at once."""
    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(1, attempts + 1):
        try:
            return push()
        except HfHubHTTPError as error:
            status = getattr(error.response, "status_code", None)
            if status is None or status < 500 or attempt == attempts:
                raise
            logger.warning("The Hub answered %s; retrying the push (%d/%d).", status, attempt + 1, attempts)
            time.sleep(wait_s * attempt)


class _hub_errors:
    """Turn the client's exceptions into one-line `HubError`s naming the fix (never the token)."""

    def __init__(self, repo_id: str, later: str):
        self.repo_id, self.later = repo_id, later

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or isinstance(error, FtPluginError):
            return False
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        status = getattr(getattr(error, "response", None), "status_code", None)
        if isinstance(error, HfHubHTTPError) and status == 401:
            message = "The Hub rejected the token (401): run `hf auth login` or set HF_TOKEN to a valid write token"
        elif isinstance(error, HfHubHTTPError) and status in (403, 404):
            message = (
                f"You cannot write to '{self.repo_id}' ({status}): push to a repo under your own name or an "
                "organisation you can write to (--repo_id your-name/model-name)"
            )
        elif isinstance(error, HfHubHTTPError) and status is not None:
            message = f"The Hub failed the push (HTTP {status}) after {PUSH_ATTEMPTS} attempts; run the push again"
        elif isinstance(error, OfflineModeIsEnabled | ConnectionError) or _is_network_error(error):
            message = "Could not reach the Hub (offline or HF_HUB_OFFLINE=1)"
        else:
            return False
        raise HubError(f"{message}: {self.later}.") from error


def _is_network_error(error: BaseException) -> bool:
    """A connection or timeout error of the client's HTTP library (`httpx`, or `httpx2` in huggingface_hub 2.x)."""
    return any(cls.__name__ == "TransportError" and cls.__module__.startswith("httpx") for cls in type(error).__mro__)
