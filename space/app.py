"""ft-plugin Space: classify texts with a base model plus a delta adapter, train small jobs live, compare, push.

    python space/app.py            # or: ft-plugin space    (offline, on the embedded MiniLM-L6 + tweets)

UI only: loading, training, saving and pushing are ft-plugin's (`TextClassifier`, `jobs.TrainingJob` on top of
`recipe.build_trainer`, `hub.push_result`). API endpoints for `gradio_client`: /predict, /predict_file, /train,
/cancel, /push (see README.md).
"""

import contextlib
import functools
import hashlib
import html
import inspect
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import MISSING, fields
from pathlib import Path

from ft_plugin.allocator import use_fast_allocator

if __name__ == "__main__":  # `python app.py`, as a Space starts: training jobs on mimalloc, as `ft-plugin space`
    use_fast_allocator()  # re-runs the script once, so before the heavy imports below

import gradio as gr
import huggingface_hub
import pandas as pd
import torch

from ft_plugin.data import (
    LABEL_COLUMN_CANDIDATES,
    TEXT_COLUMN_CANDIDATES,
    DataArguments,
    load_data,
    load_text_file,
    read_file,
)
from ft_plugin.errors import FtPluginError, first_line
from ft_plugin.inference import QUANTIZATIONS, MicroBatcher, TextClassifier, quantize_int8
from ft_plugin.jobs import FAILED, FINISHED, JobRunner, TrainingJob
from ft_plugin.methods import METHODS, parse_method
from ft_plugin.models import DEFAULT_MODEL, PACKAGED_MODELS, load_base_model
from ft_plugin.saving import read_record

logger = logging.getLogger("ft_plugin.space")

RUNS_DIR = Path(os.environ.get("FT_PLUGIN_SPACE_RUNS", "outputs/space"))  # where the app's runs are saved
RESULT_ROOTS = [Path(p) for p in os.environ.get("FT_PLUGIN_SPACE_RESULTS", "outputs").split(os.pathsep) if p]
AUTO_BASE, NO_ADAPTER = "auto", "none"
MAX_CHARS = 10_000  # longer texts are cut before tokenising (the model reads 128 tokens anyway)
EVAL_SAMPLES = 500  # validation/test texts per run: enough for a stable accuracy, quick on CPU
MODEL_CACHE_SIZE = 3
QUANTIZE = os.environ.get("FT_PLUGIN_SPACE_QUANTIZE") or None  # "int8": faster CPU serving (ft-plugin space --quantize)
if QUANTIZE not in (None, *QUANTIZATIONS):
    _setting_error = FtPluginError(
        f"FT_PLUGIN_SPACE_QUANTIZE={QUANTIZE!r} is not a quantization: set it to int8, or unset it."
    )
    if __name__ != "__main__":
        raise _setting_error  # `ft-plugin space` prints it as it prints its other errors
    print(f"ft-plugin: error: {_setting_error}", file=sys.stderr)  # `python app.py`, as a Space starts
    raise SystemExit(2)
PREDICT_BATCH_SIZE = 32  # concurrent /predict calls classified in one forward pass
# Training runs in its own process, in the background: lowest CPU priority and half the cores, so that users'
# /predict calls stay fast while a job trains (bench/space_load.py, 20 users on 2 cores: p95 1.17-1.23 s with a
# 2-thread job, 0.97-1.22 s with these settings; bench/README.md).
TRAIN_NICENESS = 19
TRAIN_THREADS = max(1, (os.cpu_count() or 2) // 2)
# ... and predictions use the other cores: torch's default (a thread per core) made each forward pass compete with
# the web server's event loop and the job for every core (20 users on 2 cores: p95 1.15-1.29 s with 2 threads,
# 0.87-0.90 s with 1, and the job trained twice as fast; bench/README.md).
SERVE_THREADS = max(1, (os.cpu_count() or 2) - TRAIN_THREADS)

RUNNER = JobRunner()

# -- security (issue 9): upload limits, per-session folders, names that cannot reach other users' files ----------
MAX_UPLOAD_MB = float(os.environ.get("FT_PLUGIN_SPACE_MAX_UPLOAD_MB", "50"))
MAX_FILE_ROWS = int(os.environ.get("FT_PLUGIN_SPACE_MAX_FILE_ROWS", "10000"))  # rows /predict_file classifies
MAX_TRAIN_MINUTES = float(os.environ.get("FT_PLUGIN_SPACE_MAX_MINUTES", "30"))  # the one training slot is shared
MAX_BATCH_SIZE = 256  # a job's memory grows with its batch; the Space's own process shares the machine
# Pushes use the visitor's token (typed, or their Hugging Face sign-in); the server's own login only when its
# owner allows it (FT_PLUGIN_SPACE_OWNER_PUSH=1, `ft-plugin space --push_as_owner`: a Space on your own machine).
OWNER_PUSH = os.environ.get("FT_PLUGIN_SPACE_OWNER_PUSH") == "1"
# /train options a visitor may set besides the method's own hyper-parameters: knobs that neither load nor write
# anything. Paths, base models, remote code, output folders, logging and Hub flags stay the Space's.
TRAINING_OPTIONS = (
    "seed", "warmup_ratio", "weight_decay", "lr_scheduler_type", "max_seq_length", "gradient_accumulation_steps",
    "max_grad_norm", "label_smoothing_factor", "attention_dropout", "class_weights", "early_stopping_patience",
)  # fmt: skip
# ... within bounds where a value costs the shared machine (a step of 10**6 accumulated batches would outlast Cancel)
OPTION_LIMITS = {"gradient_accumulation_steps": 16, "max_seq_length": 512}
SESSIONS_DIR = Path(tempfile.gettempdir()) / "ft-plugin-space-sessions"  # one private folder per browser session
# A session folder untouched this long goes when another session starts: API clients may never close a session
SESSION_TTL_HOURS = 24.0
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_extra_bases: set[str] = set()  # local base model folders offered at launch


def owner_id(request: gr.Request | None) -> str:
    """A hash of the client's session id: a safe folder name, distinct per session whatever characters it sends."""
    session = getattr(request, "session_hash", None) or "no-session"
    return hashlib.sha256(session.encode()).hexdigest()[:32]


def session_dir(request: gr.Request | None, create: bool = True) -> Path:
    """This session's own temporary folder for uploads and predictions (removed when the session ends).

    `create=False` for work that finishes later: a session that ended meanwhile is not brought back to life."""
    folder = SESSIONS_DIR / owner_id(request)
    if create:
        if not folder.is_dir():
            prune_stale_sessions()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.utime(folder)  # in use: not stale, whatever it holds
    elif not folder.is_dir():
        raise gr.Error("This session has ended: reload the page.")
    return folder


def prune_stale_sessions() -> None:
    """Remove session folders untouched for SESSION_TTL_HOURS (a browser tab's closing removes its own at once)."""
    oldest = time.time() - SESSION_TTL_HOURS * 3600
    for folder in SESSIONS_DIR.iterdir() if SESSIONS_DIR.is_dir() else []:
        with contextlib.suppress(OSError):  # another server thread may be removing it too
            if folder.stat().st_mtime < oldest:
                shutil.rmtree(folder, ignore_errors=True)


def runs_dir(request: gr.Request | None) -> Path:
    """This session's runs (kept on disk after the session ends; push a run to keep it beyond the Space)."""
    return RUNS_DIR / owner_id(request)


def visible_to(folder: Path, request: gr.Request | None) -> bool:
    """Results a session may list and load: its own runs and the Space's result folders, never other sessions' runs."""
    if _inside(folder, [RUNS_DIR]):
        return request is not None and _inside(folder, [runs_dir(request)])
    return _inside(folder, RESULT_ROOTS)


def cleanup_session(request: gr.Request) -> None:
    shutil.rmtree(session_dir(request), ignore_errors=True)


def checked_upload(path: str | None, request: gr.Request | None) -> str | None:
    """A size-checked copy of an uploaded file in the session's folder, under a safe name.

    Only files that Gradio received as uploads are accepted: an API call can name any server path as a file."""
    if not path:
        return None
    if not _inside(Path(path), [Path(gr.utils.get_upload_folder())]):
        raise gr.Error("Upload the file first: the Space reads only files uploaded to it.")
    size_mb = os.path.getsize(path) / 2**20
    if size_mb > MAX_UPLOAD_MB:
        raise gr.Error(f"The file is {size_mb:.0f} MB: the limit is {MAX_UPLOAD_MB:g} MB. Upload a smaller sample.")
    name = re.sub(r"[^\w.-]", "_", Path(path).name).lstrip(".") or "upload"
    target = session_dir(request) / name
    shutil.copyfile(path, target)
    return str(target)


def _inside(path: Path, roots: list[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(root.resolve()) for root in roots)


def checked_adapter(adapter: str, request: gr.Request | None) -> str:
    """One of this session's runs, a result under the Space's result folders, or a Hub repo id; no other path."""
    if adapter == NO_ADAPTER:
        return adapter
    if os.path.isdir(adapter) and visible_to(Path(adapter), request):
        return adapter
    if HUB_ID.match(adapter) and ".." not in adapter and not os.path.exists(adapter):
        return adapter
    raise gr.Error("Choose an adapter from the list, or give a Hub repo id such as 'username/name'.")


def checked_result(result: str, request: gr.Request | None) -> str:
    """A local result folder this session may push: its own runs or the Space's result folders."""
    if os.path.isdir(result) and visible_to(Path(result), request):
        return result
    raise gr.Error("Choose a result from the list (train one in the Train tab first).")


def checked_base(base: str) -> str:
    """A packaged short name, a base folder offered at launch, or a Hub repo id."""
    if base == AUTO_BASE or base in PACKAGED_MODELS or base in _extra_bases:
        return base
    if HUB_ID.match(base) and ".." not in base and not os.path.exists(base):
        return base
    raise gr.Error("Choose a base model from the list, or give a Hub repo id such as 'username/name'.")


def checked_word(value, what: str) -> str | None:
    """A visitor's text value that becomes a recipe flag's value (a column, a method name): a plain string, never a
    list (which would become several flags) nor something that reads as a flag."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value.lstrip().startswith("-"):
        raise gr.Error(f"{what} must be a name such as 'text', got {value!r}.")
    return value


def checked_options(options: dict | None, method: str) -> dict:
    """The /train options a visitor may set: the method's hyper-parameters and `TRAINING_OPTIONS`, with plain
    values (a number, a word, or a list of words such as target modules), never another flag."""
    if not isinstance(options, (dict, type(None))):
        raise gr.Error('Method options must be a JSON object, e.g. {"lora_r": 8}.')
    allowed = [f.name for f in _option_fields(method)] + list(TRAINING_OPTIONS)
    for key, value in (options or {}).items():
        if key not in allowed:
            raise gr.Error(f"Option '{key}' cannot be set in the Space: the options are {', '.join(allowed)}.")
        values = value if isinstance(value, list) else [value]
        plain = all(v is None or isinstance(v, (bool, int, float, str)) for v in values)
        if not plain or any(isinstance(v, str) and v.startswith("-") and not _is_number(v) for v in values):
            raise gr.Error(f"Option '{key}' has an invalid value {value!r}: give a number, a word or a list of words.")
        limit = OPTION_LIMITS.get(key)
        if limit is not None and not (isinstance(value, (int, float)) and 0 < value <= limit):
            raise gr.Error(f"Option '{key}' must be a number from 1 to {limit} here, got {value!r}.")
    return dict(options or {})


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# -- end security ------------------------------------------------------------------------------------------------
# (base, adapter, its folder's mtime) -> the loaded classifier behind a micro-batcher (concurrent /predict calls
# share forward passes)
_models: "OrderedDict[tuple[str, str, float], MicroBatcher]" = OrderedDict()
_models_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------------------------
# Helpers: user errors become gr.Error, never tracebacks
# ---------------------------------------------------------------------------------------------------------------
# The library's messages name command-line flags; a visitor sees the Space's own fields instead.
FIELDS_OF_FLAGS = {
    "model_name_or_path": "Base model",
    "method": "Method",
    "train_file": "Labelled data",
    "validation_file": "Labelled data",
    "test_file": "Labelled data",
    "text_column": "Text column",
    "label_column": "Label column",
    "learning_rate": "Learning rate",
    "num_train_epochs": "Epochs",
    "per_device_train_batch_size": "Batch size",
    "max_train_samples": "Max training samples",
    "repo_id": "Repo id",
    "hub_model_id": "Repo id",
    "private": "Private",
    "hub_private_repo": "Private",
}


def in_space_terms(message: str) -> str:
    """`message` with flags named as the Space's fields (`--text_column` -> the 'Text column' field) or options
    (`--lora_r` -> the option 'lora_r'), and `ft-plugin push ...` advice as the Push tab."""
    message = re.sub(r"(?:with |run )?`ft-plugin push [^`]*`", "from the Push tab", message)
    message = re.sub(r" ?\(see --help\)", "", message)
    message = re.sub(r"argument --([a-z][a-z0-9_]*)/--[a-z][a-z0-9-]*:", r"option '\1':", message)  # argparse's
    message = re.sub(r"\b(?:pass|give|add) (?=--)", "set ", message)

    def field(match: re.Match) -> str:
        flag = match.group(1)
        if flag in FIELDS_OF_FLAGS:
            return f"the '{FIELDS_OF_FLAGS[flag]}' field"
        return f"the option '{flag}'"

    message = re.sub(r"(?<![\w-])--([a-z][a-z0-9_]*)(?:/--[a-z][a-z0-9-]*)?", field, message)
    message = re.sub(r"(the '[^']+' field)(?: and \1)+", r"\1", message)  # two flags, one field
    return message.replace("field with one of", "field to one of")


def _message(error: BaseException) -> str:
    if isinstance(error, FtPluginError):
        return in_space_terms(str(error))
    logger.exception("Unexpected error")
    first = first_line(error)
    return f"Unexpected error ({type(error).__name__}: {first}). The server log has the details."


def _shown(error: gr.Error) -> gr.Error:
    """`error` safe to show: gradio renders an error's message as HTML, and messages quote what a visitor typed."""
    error.message = html.escape(error.message, quote=False)
    return error


def friendly(fn):
    """Show ft-plugin errors (and unexpected ones, in one line) as `gr.Error` pop-ups, their messages as text."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error as error:
                _shown(error)
                raise
            except (Exception, SystemExit) as error:  # a library's exit must not stop the server
                raise _shown(gr.Error(_message(error))) from None

        return generator

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error as error:
            _shown(error)
            raise
        except (Exception, SystemExit) as error:
            raise _shown(gr.Error(_message(error))) from None

    return wrapper


@functools.cache
def embedded_data():
    """The embedded tweets (labels for an untrained head, example inputs)."""
    return load_data(DataArguments())


def example_texts(per_label: int = 2) -> list[str]:
    """Short test-split tweets, `per_label` of each label."""
    data = embedded_data()
    test = data.splits["test"]
    chosen: dict[int, list[str]] = {i: [] for i in range(len(data.labels))}
    for text, label in zip(test["text"][:], test["label"][:]):
        if 40 <= len(text) <= 110 and "\ufffd" not in text and len(chosen[label]) < per_label:
            chosen[label].append(text)
    return [text for texts in chosen.values() for text in texts]


# ---------------------------------------------------------------------------------------------------------------
# Models: loaded once, a few kept (least recently used dropped)
# ---------------------------------------------------------------------------------------------------------------
def get_classifier(base: str, adapter: str, request: gr.Request | None) -> TextClassifier:
    """The classifier for a base model choice and an adapter choice, from the cache when possible."""
    return get_batcher(base, adapter, request).classifier


def get_batcher(base: str, adapter: str, request: gr.Request | None) -> MicroBatcher:
    """The cached classifier for a base and an adapter choice, behind its micro-batcher (loaded on first use)."""
    base = checked_base((base or AUTO_BASE).strip())
    adapter = checked_adapter((adapter or NO_ADAPTER).strip(), request)
    key = (base, adapter, _mtime(Path(adapter)))  # a result saved again in the same folder is loaded again
    with _models_lock:  # one load at a time; predictions on loaded models stay concurrent
        if key in _models:
            _models.move_to_end(key)
            return _models[key]
        if adapter == NO_ADAPTER:
            model, tokenizer = load_base_model(None if base == AUTO_BASE else base, embedded_data().labels)
            classifier = TextClassifier(model=quantize_int8(model) if QUANTIZE else model.eval(), tokenizer=tokenizer)
        else:  # a result folder or Hub id; LoRA-like adapters are merged into the base for speed
            chosen_base = None if base == AUTO_BASE else base
            classifier = TextClassifier.from_pretrained(adapter, chosen_base, quantize=QUANTIZE)
        _models[key] = MicroBatcher(classifier, max_batch_size=PREDICT_BATCH_SIZE)
        while len(_models) > MODEL_CACHE_SIZE:
            _models.popitem(last=False)[1].close()
        return _models[key]


def find_results(request: gr.Request | None) -> list[Path]:
    """Result folders (with `ft_plugin_config.json`) of this session's runs and under the result roots."""
    found = set()
    for root in [runs_dir(request), *RESULT_ROOTS]:
        for depth in ("*", "*/*", "*/*/*"):
            try:
                found.update(p.parent.resolve() for p in root.glob(f"{depth}/ft_plugin_config.json"))
            except OSError:  # a folder removed while being listed (e.g. a job's temporary files): next refresh
                continue
    visible = [folder for folder in found if visible_to(folder, request)]
    return sorted(visible, key=_mtime, reverse=True)


def _mtime(folder: Path) -> float:
    try:
        return folder.stat().st_mtime
    except OSError:  # removed since it was found
        return 0.0


def result_choices(request: gr.Request | None = None) -> list[tuple[str, str]]:
    """(label, value) for every result this session sees: its runs (with their accuracy), then local folders."""
    owner = owner_id(request)
    runs = {job.output_dir.resolve(): job for job in RUNNER.owned_by(owner) if job.has_result}
    choices = []
    for folder in find_results(request):
        job = runs.get(folder)
        if job is not None:
            accuracy = job.summary()["accuracy"]
            label = f"{job.name} · {job.method}" + (f" · acc {accuracy:.3f}" if accuracy is not None else "")
        else:
            record = read_record(folder)
            label = f"{folder.name} · {record.get('method')} (local)"
        choices.append((label, str(folder)))
    return choices


def base_choices(extra: list[str]) -> list[tuple[str, str]]:
    packaged = [(f"{name} · {model.description.split(' (')[0]}", name) for name, model in PACKAGED_MODELS.items()]
    return packaged + [(Path(path).name, path) for path in extra]


# ---------------------------------------------------------------------------------------------------------------
# Predict
# ---------------------------------------------------------------------------------------------------------------
@friendly
def predict(
    text: str, base: str = AUTO_BASE, adapter: str = NO_ADAPTER, request: gr.Request = None
) -> dict[str, float]:
    """Label probabilities of one text."""
    text = (text or "").strip()
    if not text:
        raise gr.Error("The text is empty: type a sentence to classify.")
    batcher = get_batcher(base, adapter, request)
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS]
    classifier = batcher.classifier
    tokens = classifier.count_tokens(text)
    if tokens > classifier.max_length:
        gr.Warning(f"The text has {tokens} tokens: only the first {classifier.max_length} were classified.")
    return batcher.predict(text)


def adapter_note(adapter: str | None) -> str:
    """A hint under the model pickers while no adapter is chosen."""
    if (adapter or NO_ADAPTER) != NO_ADAPTER:
        return ""
    return (
        "No adapter: the classification head is untrained, so scores are near chance. Train one in the "
        "**Train** tab (a minute on CPU) or pick a result."
    )


def _column_picker(columns: list[str], candidates: tuple[str, ...], fallback: int) -> gr.Dropdown:
    guess = next((c for c in candidates if c in columns), columns[fallback] if columns else None)
    return gr.Dropdown(choices=columns, value=guess, visible=bool(columns))


@friendly
def file_columns(path: str | None, request: gr.Request = None) -> gr.Dropdown:
    """Text column picker for an uploaded file (a text-like column preselected)."""
    path = checked_upload(path, request)
    return _column_picker(read_file(path).column_names if path else [], TEXT_COLUMN_CANDIDATES, 0)


@friendly
def train_file_columns(path: str | None, request: gr.Request = None) -> tuple[gr.Dropdown, gr.Dropdown]:
    """Text and label column pickers for a training file; hidden while the embedded tweets are used."""
    path = checked_upload(path, request)
    columns = read_file(path).column_names if path else []
    return (
        _column_picker(columns, TEXT_COLUMN_CANDIDATES, 0),
        _column_picker(columns, LABEL_COLUMN_CANDIDATES, -1),
    )


@friendly
def predict_file(
    path: str | None,
    text_column: str | None,
    base: str = AUTO_BASE,
    adapter: str = NO_ADAPTER,
    request: gr.Request = None,
):
    """Classify every row of a CSV/JSONL/... file: a predictions CSV (its columns, predicted_label, score_<label>)."""
    if not path:
        raise gr.Error("Upload a csv, tsv, jsonl or parquet file with a text column first.")
    path = checked_upload(path, request)
    texts, text_column = load_text_file(path, text_column or None)
    frame = texts.to_pandas()
    if len(frame) > MAX_FILE_ROWS:
        raise gr.Error(
            f"The file has {len(frame):,} rows: the Space classifies up to {MAX_FILE_ROWS:,} at a time. Split it, "
            "or run `ft-plugin predict --input_file` on your own machine."
        )
    classifier = get_classifier(base, adapter, request)
    frame = classifier.predict_frame(frame, text_column)
    output = session_dir(request, create=False) / f"{Path(path).stem}_predictions.csv"
    frame.to_csv(output, index=False)
    return str(output), frame.head(20)


# ---------------------------------------------------------------------------------------------------------------
# Train
# ---------------------------------------------------------------------------------------------------------------
def _option_fields(method: str) -> list:
    """The hyper-parameter fields of a method or `+`-combination (its recipe flags), minus automatic ones."""
    return [
        f
        for spec in parse_method(method)
        for f in fields(spec.config_cls)
        if f.name != "adalora_total_step"  # set from the schedule, not by users
    ]


def method_defaults(method: str) -> dict:
    """The method's hyper-parameters and their defaults."""
    return {f.name: (f.default if f.default is not MISSING else None) for f in _option_fields(method)}


def method_help(method: str) -> str:
    """The method's description and a table of its options."""
    specs = parse_method(method)
    about = " ".join(f"**{spec.name}** ({spec.family}): {spec.description}" for spec in specs)
    rows = "\n".join(
        f"| `{f.name}` | {f.metadata.get('help', '').split(': ', 1)[-1]} |" for f in _option_fields(method)
    )
    return about + (f"\n\n| option | meaning |\n|---|---|\n{rows}" if rows else "\n\n*No method options.*")


@friendly
def on_method_change(method: str) -> tuple[float, str, str]:
    """Learning rate (the lowest default of the methods), options (JSON) and help of a newly chosen method."""
    learning_rate = min(spec.learning_rate for spec in parse_method(method))
    return learning_rate, json.dumps(method_defaults(method), indent=1), method_help(method)


def parse_options(code: str) -> dict:
    """The method options box (JSON) as a dict of recipe flags."""
    try:
        value = json.loads(code or "{}")
    except json.JSONDecodeError as error:
        raise gr.Error(f"Method options are not valid JSON ({error.msg}, line {error.lineno}).") from None
    if not isinstance(value, dict):
        raise gr.Error('Method options must be a JSON object, e.g. {"lora_r": 8}.')
    return value


def _run_name(method: str, request: gr.Request | None) -> str:
    """A new run name for this session: `lora-1`, `lora-2`..."""
    stem, index = method.replace("+", "_"), 1
    taken = {job.name for job in RUNNER.owned_by(owner_id(request))}
    while (runs_dir(request) / f"{stem}-{index}").exists() or f"{stem}-{index}" in taken:
        index += 1
    return f"{stem}-{index}"


def _status_html(job: TrainingJob) -> str:
    """A progress bar with the latest loss/accuracy (a plain HTML block, so it updates without flicker)."""
    last = {}
    for record in job.history:
        last.update({k: v for k, v in record.items() if k in ("loss", "eval_accuracy")})
    parts = [f"step {job.step}/{job.max_steps or '?'}", job.phase]
    if "loss" in last:
        parts.append(f"loss {last['loss']:.3f}")
    if "eval_accuracy" in last:
        parts.append(f"val. accuracy {last['eval_accuracy']:.3f}")
    parts.append(f"{job.elapsed:.0f} s")
    if job.state == FINISHED or (job.has_result and job.state != FAILED):
        summary = job.summary()
        parts = [f"<b>{job.name}</b> {job.state}" + (f" ({job.stop_reason})" if job.stop_reason else "")]
        if summary["accuracy"] is not None:
            parts.append(f"test accuracy {summary['accuracy']:.3f}")
        parts.append(f"{summary['train seconds']} s · now in the Predict tab")
    elif not job.is_alive():
        reason = html.escape(in_space_terms(job.error or job.stop_reason or ""))  # may quote a visitor's input
        parts = [f"<b>{job.name}</b> {job.state}: {reason}"]
    percent = 100 * (1.0 if not job.is_alive() else job.progress)
    return (
        f'<div class="job-status"><div class="bar"><div style="width:{percent:.0f}%"></div></div>'
        f"<span>{' · '.join(parts)}</span></div>"
    )


def _curve(job: TrainingJob) -> pd.DataFrame | None:
    """Long-format curve for `gr.LinePlot`: training loss, validation loss and accuracy against steps."""
    series = {"loss": "train loss", "eval_loss": "validation loss", "eval_accuracy": "validation accuracy"}
    rows = [
        (record["step"], name, record[key]) for record in job.history for key, name in series.items() if key in record
    ]
    if not rows:  # None, not an empty frame: a plot first given no rows draws no coloured lines later (Gradio 6)
        return None
    frame = pd.DataFrame(rows, columns=["step", "series", "value"])
    return frame.drop_duplicates(["step", "series"], keep="last")


WAITING_HTML = '<div class="job-status"><span>Queued: waiting for the running job to finish.</span></div>'


@friendly
def train(
    train_file: str | None,
    text_column: str | None,
    label_column: str | None,
    base: str,
    method: str,
    learning_rate: float,
    epochs: float,
    batch_size: int,
    max_samples: int,
    max_minutes: float,
    options: dict | None,
    request: gr.Request = None,
):
    """Start a training job and stream its progress; the finished adapter appears in the Predict tab.

    Waits while another session's job trains; a client that leaves (closes the tab) cancels its own job, which
    keeps the model trained so far, so that the shared training slot is not held for nobody."""
    method, text_column, label_column = (
        checked_word(value, what)
        for value, what in ((method, "Method"), (text_column, "Text column"), (label_column, "Label column"))
    )
    base = checked_base((checked_word(base, "Base model") or AUTO_BASE).strip())
    train_file = checked_upload(train_file, request)
    options = checked_options(options, method)
    numbers = {"Learning rate": learning_rate, "Epochs": epochs, "Batch size": batch_size}
    for label, value in {**numbers, "Max samples": max_samples, "Max minutes": max_minutes}.items():
        if value is None and label in numbers:
            raise gr.Error(f"{label} is empty: give a number.")
        if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise gr.Error(f"{label} must be a number, got {value!r}.")
    if not 1 <= int(batch_size) <= MAX_BATCH_SIZE:
        raise gr.Error(f"Batch size must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}.")
    if max_minutes and max_minutes > MAX_TRAIN_MINUTES:
        raise gr.Error(f"Max minutes is at most {MAX_TRAIN_MINUTES:g} here (one job trains at a time).")
    while RUNNER.current is not None:  # a job still stopping (gradio runs one /train at a time)
        yield WAITING_HTML, None, None
        time.sleep(1.0)
    name = _run_name(method, request)
    job = TrainingJob(
        {
            "method": method,
            "model_name_or_path": None if base in (None, "", AUTO_BASE) else base,
            "train_file": train_file,
            "text_column": text_column if train_file else None,
            "label_column": label_column if train_file else None,
            "learning_rate": learning_rate,
            "num_train_epochs": epochs,
            "per_device_train_batch_size": int(batch_size),
            "max_train_samples": int(max_samples) if max_samples else None,
            "max_eval_samples": EVAL_SAMPLES,
            "max_predict_samples": EVAL_SAMPLES,
            # a live curve: log every 5% of the steps, evaluate every 25%; the result folder is the checkpoint
            "logging_first_step": True,
            "logging_steps": 0.05,
            "eval_strategy": "steps",
            "eval_steps": 0.25,
            "save_strategy": "no",
            "load_best_model_at_end": False,
            **options,
            "output_dir": str(runs_dir(request) / name),
        },
        max_minutes=max_minutes or MAX_TRAIN_MINUTES,
        name=name,
        owner=owner_id(request),
        niceness=TRAIN_NICENESS,
        threads=TRAIN_THREADS,
        hub_login=False,  # a visitor's Hub base model is downloaded anonymously, never with the Space's login
    )
    RUNNER.submit(job)
    try:
        while job.is_alive():
            yield _status_html(job), _curve(job), job.summary()
            time.sleep(1.0)
    except GeneratorExit:  # the client left: stop after the current step (the model so far is still saved)
        job.cancel()
        raise
    yield _status_html(job), _curve(job), job.summary()
    if job.state == FAILED:
        raise gr.Error(f"Training '{job.name}' failed: {in_space_terms(job.error)}")


def cancel(request: gr.Request = None) -> str:
    """Stop this session's running job after its current step; the model trained so far is evaluated and saved."""
    job = RUNNER.current
    if job is None or job.owner != owner_id(request):
        message = "No training job of yours is running." + (" (Another user's job is training.)" if job else "")
        gr.Warning(message)
        return message
    job.cancel()
    return f"Cancelling **{job.name}** after its current step; the model trained so far is evaluated and kept."


def announce_queue(request: gr.Request = None):
    """When a job is training, tell the user that theirs waits (the Train event itself queues it)."""
    running = RUNNER.current
    if running is None:
        return gr.skip()
    name = f"'{running.name}'" if running.owner == owner_id(request) else "another user's job"
    gr.Info(f"{name} is training: your job is queued and starts when it ends.")
    return f'<div class="job-status"><span>Queued: waiting for {name} to finish.</span></div>'


# ---------------------------------------------------------------------------------------------------------------
# Compare and push
# ---------------------------------------------------------------------------------------------------------------
def runs_table(request: gr.Request | None) -> pd.DataFrame:
    """This session's runs, a row each."""
    jobs = RUNNER.owned_by(owner_id(request))
    table = pd.DataFrame([job.summary() for job in jobs]).drop(columns=["output_dir"], errors="ignore")
    if "base model" in table:  # local folders by their name
        table["base model"] = [Path(name).name if os.path.isdir(name) else name for name in table["base model"]]
    return table.round({"accuracy": 3, "f1 (macro)": 3})


def refresh(x: str, pushed: str | None, request: gr.Request = None):
    """Result choices (Predict and Push tabs), the runs table and the scatter plot, after a run or on a tab."""
    choices = result_choices(request)
    table = runs_table(request)
    plotted = table.dropna(subset=["accuracy"]) if "accuracy" in table else table
    values = [value for _, value in choices]
    return (
        gr.Dropdown(choices=[("none · untrained head", NO_ADAPTER), *choices]),
        gr.Dropdown(choices=choices, value=pushed if pushed in values else (values[0] if values else None)),
        table,
        gr.ScatterPlot(plotted, x=x),
    )


@friendly
def push(
    result: str,
    repo_id: str,
    token: str,
    private: bool,
    oauth_token: gr.OAuthToken | None = None,
    request: gr.Request = None,
) -> str:
    """Push a result folder (adapter, tokenizer, model card) to the Hub; returns the repository link."""
    if not result:
        raise gr.Error("Choose a result to push (train one in the Train tab first).")
    if not repo_id or not HUB_ID.match(repo_id.strip()) or ".." in repo_id:
        raise gr.Error("Give the repo id as 'username/name', e.g. 'alice/minilm-lora-tweets'.")
    result = checked_result(result, request)
    try:
        from ft_plugin.hub import push_result
    except ImportError:
        raise gr.Error("This ft-plugin has no Hub support (ft_plugin.hub): upgrade ft-plugin to push.") from None
    token = (token or "").strip() or (oauth_token.token if oauth_token is not None else None)
    if token is None and not OWNER_PUSH:  # never the Space's own login on behalf of a visitor
        raise gr.Error(
            "Paste a Hugging Face token with write access (or sign in with Hugging Face): the Space pushes only with "
            "yours."
        )
    url = push_result(result, repo_id.strip(), token=token, private=bool(private))
    return f"Pushed to [{url}]({url})"


# ---------------------------------------------------------------------------------------------------------------
# Layout and wiring
# ---------------------------------------------------------------------------------------------------------------
CSS = """
.job-status { display: flex; flex-direction: column; gap: 6px; font-size: 0.95em; }
.job-status .bar { height: 10px; border-radius: 5px; background: var(--neutral-200); overflow: hidden; }
.job-status .bar div { height: 100%; background: var(--color-accent); transition: width 0.8s ease; }
#header p { color: var(--body-text-color-subdued); }
.note p { font-size: 0.9em; color: var(--body-text-color-subdued); margin: 0 4px; }
"""
THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="sky")
HEADER = """
<div id="header">

# ft-plugin: delta fine-tuning for text classification

Classify text with a pretrained transformer plus a small trained **adapter** (LoRA, IA3, BitFit, prompt tuning,
bottleneck adapters...), train new adapters in minutes on CPU, compare them and push the best to the Hub.
Works offline: the default model (MiniLM-L6) and dataset (37k tweets: negative / neutral / positive) are embedded.
</div>
"""


def build_demo(extra_base_models: list[str] | None = None) -> gr.Blocks:
    """The Space. `extra_base_models`: more base model choices (local folders or Hub ids)."""
    extra = list(extra_base_models or [])
    _extra_bases.update(extra)
    method_names = list(METHODS)
    default_method = "lora" if "lora" in METHODS else method_names[0]
    # delete_cache: Gradio's copies of uploads and outputs older than an hour go, hourly
    with gr.Blocks(title="ft-plugin · delta fine-tuning", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(HEADER)
        with gr.Tabs():
            # -- Predict -------------------------------------------------------------------------------------
            with gr.Tab("Predict", id="predict") as predict_tab:
                with gr.Row():
                    base = gr.Dropdown(
                        [("auto · the adapter's base (MiniLM-L6 without one)", AUTO_BASE), *base_choices(extra)],
                        value=AUTO_BASE, label="Base model", allow_custom_value=True, scale=2,
                        info="A short name, a local folder or a Hub id.",
                    )  # fmt: skip
                    adapter = gr.Dropdown(
                        [("none · untrained head", NO_ADAPTER), *result_choices()],
                        value=NO_ADAPTER, label="Adapter", allow_custom_value=True, scale=3,
                        info="A run from the Train tab, a local result folder or a Hub repo id.",
                    )  # fmt: skip
                note = gr.Markdown(adapter_note(NO_ADAPTER), elem_classes="note")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        text = gr.Textbox(
                            label="Text", elem_id="predict-text", lines=4, max_lines=12, placeholder="Type a sentence, e.g. a tweet...",
                            autofocus=True,
                        )  # fmt: skip
                        with gr.Row():
                            gr.ClearButton([text], value="Clear")
                            predict_button = gr.Button("Predict", variant="primary", elem_id="predict-button")
                    with gr.Column(scale=2):
                        scores = gr.Label(label="Label probabilities", num_top_classes=5, elem_id="scores")
                gr.Examples([[t] for t in example_texts()], inputs=[text], label="Tweets from the test split")
                with gr.Accordion("Classify a whole file", open=False):
                    with gr.Row():
                        upload = gr.File(
                            label="CSV / TSV / JSONL / Parquet", file_types=[".csv", ".tsv", ".jsonl", ".json", ".parquet"]
                        )  # fmt: skip
                        with gr.Column():
                            upload_column = gr.Dropdown([], label="Text column", allow_custom_value=True, visible=False)
                            file_button = gr.Button("Classify file", variant="primary")
                            predictions_file = gr.File(label="Predictions (CSV)", interactive=False)
                    preview = gr.Dataframe(label="First rows", interactive=False, max_height=300)

            # -- Train ---------------------------------------------------------------------------------------
            with gr.Tab("Train", id="train"):
                gr.Markdown(
                    "Train an adapter on the embedded tweets or your own labelled file. One job runs at a time "
                    "(others wait in a queue); **Cancel** stops it and keeps the model trained so far."
                )
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2):
                        train_file = gr.File(
                            label="Labelled data (empty: the embedded tweets)",
                            elem_id="train-file",
                            file_types=[".csv", ".tsv", ".jsonl", ".json", ".parquet"],
                        )
                        with gr.Row():
                            text_column = gr.Dropdown([], label="Text column", allow_custom_value=True, visible=False)
                            label_column = gr.Dropdown([], label="Label column", allow_custom_value=True, visible=False)
                        train_base = gr.Dropdown(
                            base_choices(extra),
                            value=DEFAULT_MODEL,
                            label="Base model",
                            allow_custom_value=True,
                            elem_id="train-base",
                        )
                        method = gr.Dropdown(
                            [(f"{name} · {METHODS[name].family}", name) for name in method_names],
                            value=default_method, label="Method", allow_custom_value=True,
                            info="Or a combination, e.g. lora+bitfit.",
                        )  # fmt: skip
                        with gr.Row():
                            learning_rate = gr.Number(
                                METHODS[default_method].learning_rate, label="Learning rate", min_width=110
                            )
                            epochs = gr.Number(1, label="Epochs", minimum=0.1, elem_id="epochs", min_width=110)
                            batch_size = gr.Number(16, label="Batch size", precision=0, minimum=1, min_width=110)
                        with gr.Row():
                            max_samples = gr.Number(
                                1000,
                                label="Max training samples",
                                precision=0,
                                minimum=1,
                                elem_id="max-samples",
                                min_width=110,
                            )
                            max_minutes = gr.Number(5, label="Max minutes", minimum=0.1, min_width=110)
                        with gr.Accordion("Method options", open=False):
                            options = gr.JSON(method_defaults(default_method), visible=False)
                            options_code = gr.Code(
                                on_method_change(default_method)[1],
                                language="json",
                                label="Options (the method's hyper-parameters, as recipe flags)",
                                interactive=True,
                                lines=6,
                            )
                            options_help = gr.Markdown(method_help(default_method))
                        with gr.Row():
                            cancel_button = gr.Button("Cancel", variant="stop")
                            train_button = gr.Button("Train", variant="primary", elem_id="train-button")
                        cancel_note = gr.Markdown()
                    with gr.Column(scale=3):
                        status = gr.HTML(
                            '<div class="job-status"><span>No job yet.</span></div>', elem_id="train-status"
                        )
                        curve = gr.LinePlot(
                            None, x="step", y="value", color="series",
                            title="Training curve", height=320, x_title="optimizer step", y_title="",
                        )  # fmt: skip
                        summary = gr.JSON(label="Run summary", open=False)

            # -- Compare -------------------------------------------------------------------------------------
            with gr.Tab("Compare", id="compare") as compare_tab:
                gr.Markdown("Every run made in this app: accuracy on the test split against its cost.")
                x_axis = gr.Radio(
                    ["trainable params", "train seconds", "peak memory (MB)"], value="trainable params", label="x axis"
                )
                scatter = gr.ScatterPlot(
                    x="trainable params",
                    y="accuracy",
                    color="method",
                    height=340,
                    tooltip=["run", "method"],
                    x_axis_format="~s",
                    y_axis_format=".2f",
                )
                table = gr.Dataframe(label="Runs", interactive=False, elem_id="runs-table")

            # -- Push ----------------------------------------------------------------------------------------
            with gr.Tab("Push to Hub", id="push") as push_tab:
                gr.Markdown("Push a result (adapter, tokenizer, label mapping and a model card) to a Hub repository.")
                push_result = gr.Dropdown(result_choices(), label="Result", allow_custom_value=True)
                with gr.Row():
                    repo_id = gr.Textbox(label="Repo id", placeholder="username/minilm-lora-tweets")
                    token = gr.Textbox(label="Token (write access)", type="password", placeholder="hf_...")
                    private = gr.Checkbox(True, label="Private")
                if os.environ.get("SPACE_ID"):  # on Spaces: the Hub sign-in replaces the token box
                    gr.LoginButton()
                push_button = gr.Button("Push", variant="primary")
                push_link = gr.Markdown()

        # -- Wiring ----------------------------------------------------------------------------------------------
        gr.on(
            [predict_button.click, text.submit], predict, [text, base, adapter], scores,
            api_name="predict", concurrency_limit=PREDICT_BATCH_SIZE,  # waiting calls form one batch
        )  # fmt: skip
        adapter.change(adapter_note, adapter, note, api_visibility="private")
        upload.upload(file_columns, upload, upload_column, api_visibility="private")
        file_button.click(
            predict_file, [upload, upload_column, base, adapter], [predictions_file, preview],
            api_name="predict_file", concurrency_limit=2,
        )  # fmt: skip

        train_file.change(train_file_columns, train_file, [text_column, label_column], api_visibility="private")
        method.change(on_method_change, method, [learning_rate, options_code, options_help], api_visibility="private")
        # queued (gr.Info needs an event) but never waiting: its own unlimited concurrency group
        train_button.click(
            announce_queue, None, status, api_visibility="private", concurrency_limit=None, concurrency_id="notices"
        )
        train_event = train_button.click(
            parse_options, options_code, options, api_visibility="private", queue=False
        ).success(
            train,
            [train_file, text_column, label_column, train_base, method, learning_rate, epochs, batch_size,
             max_samples, max_minutes, options],
            [status, curve, summary],
            api_name="train", concurrency_limit=1, concurrency_id="train", show_progress="hidden",
        )  # fmt: skip
        cancel_button.click(cancel, None, cancel_note, api_name="cancel", queue=False)

        # new runs show up in the Predict, Compare and Push tabs
        for trigger in (train_event.then, compare_tab.select, push_tab.select, predict_tab.select, x_axis.change):
            trigger(refresh, [x_axis, push_result], [adapter, push_result, table, scatter], api_visibility="private")
        push_button.click(push, [push_result, repo_id, token, private], push_link, api_name="push", concurrency_limit=1)
        demo.unload(cleanup_session)  # the session's uploads and predictions go when its browser tab closes
    return demo


def _stop_like_ctrl_c(signum, frame) -> None:
    """SIGTERM (a Space restarting, `docker stop`) ends the app as Ctrl-C does: Gradio closes, a running job stops
    and temporary folders are removed; Python's default for SIGTERM skips all of that."""
    raise KeyboardInterrupt


def launch(extra_base_models: list[str] | None = None, **kwargs) -> gr.Blocks:
    """Build and launch the Space (keyword arguments go to `Blocks.launch`)."""
    torch.set_num_threads(SERVE_THREADS)  # the Space's process only serves: training runs in a child process
    # The Hub ids visitors name (base models, adapters) are downloaded anonymously: the Space's own login (HF_TOKEN)
    # would let them use the owner's private models. Pushes pass a token explicitly (see `push`).
    huggingface_hub.constants.HF_HUB_DISABLE_IMPLICIT_TOKEN = True
    if not kwargs.get("prevent_thread_lock"):  # the app owns the process: launch() blocks until it is stopped
        signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
    demo = build_demo(extra_base_models)
    demo.queue(default_concurrency_limit=2)
    kwargs.setdefault("max_file_size", f"{MAX_UPLOAD_MB:g}mb")  # Gradio refuses bigger uploads before saving them
    demo.launch(theme=THEME, css=CSS, **kwargs)
    return demo


if __name__ == "__main__":
    launch()
