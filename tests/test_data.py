"""Data loading: the embedded default's fixed split, local files of every type, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest

from ft_plugin.data import DataArguments, load_data
from ft_plugin.errors import DataError

from .conftest import make_texts


@pytest.fixture(scope="module")
def embedded():
    return load_data(DataArguments())


def test_embedded_default_has_a_fixed_stratified_three_way_split(embedded):
    assert embedded.labels == ["negative", "neutral", "positive"]
    sizes = {split: len(embedded.splits[split]) for split in ("train", "validation", "test")}
    assert sum(sizes.values()) == 37243, "38,158 rows less 915 duplicated texts"
    assert sizes["test"] == sizes["validation"] == 3725
    for split in ("validation", "test"):  # stratified: class shares within 0.2 points of the deduplicated corpus
        labels = embedded.splits[split]["label"]
        assert abs(labels.count(0) / len(labels) - 15978 / 37243) < 0.002
    again = load_data(DataArguments(max_train_samples=100))
    assert again.splits["test"]["text"] == embedded.splits["test"]["text"], "the test split must not move"
    assert len(again.splits["train"]) == 100
    assert not set(embedded.splits["test"]["text"]) & set(embedded.splits["train"]["text"]), "no text in two splits"


def _write(tmp_path, name: str, rows: list[dict]) -> str:
    import pandas as pd

    path = tmp_path / name
    frame = pd.DataFrame(rows)
    if name.endswith(".csv"):
        frame.to_csv(path, index=False)
    elif name.endswith(".tsv"):
        frame.to_csv(path, index=False, sep="\t")
    elif name.endswith(".jsonl"):
        frame.to_json(path, orient="records", lines=True)
    elif name.endswith(".json"):
        path.write_text(json.dumps(rows))
    else:
        frame.to_parquet(path)
    return str(path)


def _raw(path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


ROWS = [{"sentence": text, "sentiment": label} for text, label in make_texts(60)]


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl", "d.json", "d.parquet"])
def test_local_files_of_every_type_load_with_named_columns(tmp_path, name):
    path = _write(tmp_path, name, ROWS)
    data = load_data(DataArguments(train_file=path, text_column="sentence", label_column="sentiment"))
    assert data.labels == ["negative", "neutral", "positive"]
    assert sum(len(s) for s in data.splits.values()) == 60
    assert set(data.splits["train"].column_names) == {"text", "label"}


def test_columns_are_detected_and_integer_labels_keep_their_values(tmp_path):
    rows = [
        {"text": text, "label": ["negative", "neutral", "positive"].index(label) * 2} for text, label in make_texts(30)
    ]
    data = load_data(DataArguments(train_file=_write(tmp_path, "d.csv", rows)))
    assert data.labels == ["0", "2", "4"]


def test_given_splits_are_used_as_is(tmp_path):
    train = _write(tmp_path, "train.csv", ROWS)
    test = _write(tmp_path, "test.csv", ROWS[:9])
    data = load_data(DataArguments(train_file=train, test_file=test, text_column="sentence", label_column="sentiment"))
    assert len(data.splits["test"]) == 9 and len(data.splits["train"]) + len(data.splits["validation"]) == 60


def test_rows_without_label_are_dropped_and_pairs_are_kept(tmp_path):
    rows = [{"sentence1": t, "sentence2": t[::-1], "label": lab} for t, lab in make_texts(30)]
    rows[0]["label"] = None
    data = load_data(DataArguments(train_file=_write(tmp_path, "d.jsonl", rows)))
    assert data.has_pairs and sum(len(s) for s in data.splits.values()) == 29
    assert "text_pair" in data.splits["train"].column_names


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: str(p / "missing.csv"), "does not exist: check the path"),
        (lambda p: _raw(p / "e.csv", b""), "is empty"),
        (lambda p: _raw(p / "h.csv", b"text,label\n"), "has no rows under its header"),
        (lambda p: _raw(p / "x.txt", b"a"), "unsupported type"),
        (lambda p: _raw(p / "l.csv", "text,label\ncaf\xe9,a\n".encode("latin-1")), "is not UTF-8"),
        (lambda p: _write(p, "o.csv", [{"text": "a", "label": "x"}] * 5), "only one label"),
        (
            lambda p: _write(p, "c.csv", [{"body": "a", "label": "x"}, {"body": "b", "label": "y"}]),
            "No text column found among ['body', 'label']",
        ),
    ],
    ids=["missing", "empty", "header-only", "type", "latin1", "one-label", "no-text-column"],
)
def test_bad_files_give_one_line_errors(tmp_path, make, message):
    with pytest.raises(DataError) as error:
        load_data(DataArguments(train_file=make(tmp_path)))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_wrong_column_names_list_the_columns_found(tmp_path):
    path = _write(tmp_path, "d.csv", ROWS)
    with pytest.raises(DataError, match=r"Text column 'review' not found; the columns are \['sentence', 'sentiment'\]"):
        load_data(DataArguments(train_file=path, text_column="review"))


def test_test_labels_unseen_in_training_are_rejected(tmp_path):
    train = _write(tmp_path, "train.csv", ROWS)
    test = _write(tmp_path, "test.csv", [{"sentence": "x", "sentiment": "angry"}])
    with pytest.raises(DataError, match=r"labels never seen in training: \['angry'\]"):
        load_data(DataArguments(train_file=train, test_file=test, text_column="sentence", label_column="sentiment"))


def test_bad_arguments_are_rejected_before_loading():
    with pytest.raises(DataError, match="--max_train_samples must be a positive"):
        DataArguments(max_train_samples=0)


def test_the_same_data_is_tokenised_once_per_tokenizer_and_length(tiny_model_dir, tiny_csv):
    from transformers import AutoTokenizer

    data = load_data(DataArguments(train_file=str(tiny_csv)))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    first = data.tokenize(tokenizer, 32)
    assert data.tokenize(AutoTokenizer.from_pretrained(tiny_model_dir), 32) is first  # a sweep's trials, a race
    shorter = data.tokenize(tokenizer, 6)
    assert shorter is not first and max(len(ids) for ids in shorter["train"]["input_ids"]) == 6


def test_a_sample_limit_above_the_rows_keeps_the_data_as_it_is(tiny_csv, caplog):
    """`--max_train_samples` larger than the data uses all of it in the same order as no limit (the Trainer's
    shuffling then gives the same run), and says so once."""
    plain = load_data(DataArguments(train_file=str(tiny_csv)))
    limited = load_data(DataArguments(train_file=str(tiny_csv), max_train_samples=10**6, max_eval_samples=10**6))
    for split in ("train", "validation", "test"):
        assert limited.splits[split]["text"][:] == plain.splits[split]["text"][:], split
    assert caplog.text.count("exceeds the") == 2
    smaller = load_data(DataArguments(train_file=str(tiny_csv), max_train_samples=50))
    assert len(smaller.splits["train"]) == 50 and set(smaller.splits["train"]["text"][:]) < set(
        plain.splits["train"]["text"][:]
    )


def test_a_hub_dataset_while_the_hub_cannot_be_reached_fails_at_once_from_the_cache(monkeypatch, tmp_path):
    """One quick request decides that the Hub is unreachable; the load then uses the cache only (the client's
    retries took about 25 s and printed ten warnings) and the process's offline setting is left as it was."""
    import socket

    import huggingface_hub.constants

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(DataError, match=r"Dataset 'nobody/no-such-data' could not be loaded \(.*OfflineModeIsEnabled"):
        load_data(DataArguments(dataset_name="nobody/no-such-data"))
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False


def test_a_table_is_written_beside_its_target_and_renamed_in(tmp_path, monkeypatch):
    """`predict --output_file`: while the rows are written (where a kill would stop it) the target is still the
    file it replaces; a failure leaves that file and no partial one."""
    import pandas as pd

    from ft_plugin import data

    target = tmp_path / "predictions.csv"
    target.write_text("previous,predictions\n")
    frame = pd.DataFrame({"text": ["a", "b"], "predicted_label": ["x", "y"]})
    write_csv, seen = data.TABLE_WRITERS[".csv"], []

    def write_and_look(rows, path):
        write_csv(rows, path)
        seen.append(target.read_text())

    monkeypatch.setitem(data.TABLE_WRITERS, ".csv", write_and_look)
    data.write_table(frame, str(target))
    assert seen == ["previous,predictions\n"] and pd.read_csv(target).equals(frame)

    def fail(rows, path):
        with open(path, "w") as handle:
            handle.write("text,predicted_label\nhalf")
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(data.TABLE_WRITERS, ".csv", fail)
    with pytest.raises(OSError):
        data.write_table(frame, str(target))
    assert pd.read_csv(target).equals(frame) and [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]
