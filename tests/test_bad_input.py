"""Bad input, one case per row of docs/errors.md: a one-line error naming the problem and the fix and exit status 2
(no traceback unless --debug), or a warning where training can go on.

Errors run the recipe's `main()` in-process on the tiny model (fast); one subprocess checks what a user sees.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ft_plugin.cli import main as cli_main
from ft_plugin.data import DataArguments, load_data
from ft_plugin.recipe import main as train_main

from .conftest import make_texts

ROOT = Path(__file__).resolve().parents[1]
ROWS = make_texts(60)


def _csv(rows, header="text,label") -> str:
    return header + "\n" + "".join(f"{text},{label}\n" for text, label in rows)


def _jsonl(rows, str_labels: bool) -> bytes:
    """Labels as the integers 0/1/2, or as the strings "0"/"1"/"2"."""
    names = ["negative", "neutral", "positive"]
    convert = str if str_labels else int
    return "".join(json.dumps({"text": t, "label": convert(names.index(label))}) + "\n" for t, label in rows).encode()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every bad (and oddly formed but valid) input file, by case name."""
    import pandas as pd

    folder = tmp_path_factory.mktemp("bad-input")
    contents: dict[str, bytes] = {
        "empty.csv": b"",
        "header_only.csv": b"text,label\n",
        "latin1.csv": _csv(ROWS).encode() + "caf\xe9 cr\xe8me,positive\n".encode("latin-1"),
        "bom.csv": b"\xef\xbb\xbf" + _csv(ROWS).encode(),
        "crlf.csv": _csv(ROWS).replace("\n", "\r\n").encode(),
        "crlf.jsonl": _jsonl(ROWS, str_labels=False).replace(b"\n", b"\r\n"),
        "columns.json": json.dumps({"text": [t for t, _ in ROWS], "label": [label for _, label in ROWS]}).encode(),
        "strings.json": json.dumps([t for t, _ in ROWS]).encode(),
        "one_class.csv": _csv([(t, "positive") for t, _ in ROWS]).encode(),
        "unseen_test.csv": _csv([(t, "angry") for t, _ in ROWS[:6]] + ROWS[:6]).encode(),
        "int_labels.csv": _csv([(t, ["negative", "neutral", "positive"].index(label)) for t, label in ROWS]).encode(),
        "list_texts.jsonl": b"".join(json.dumps({"text": t.split(), "label": lb}).encode() + b"\n" for t, lb in ROWS),
        "mixed_texts.jsonl": b"".join(
            json.dumps({"text": 7 if i == 5 else t, "label": lb}).encode() + b"\n" for i, (t, lb) in enumerate(ROWS)
        ),
        "list_labels.jsonl": b"".join(
            json.dumps({"text": t, "label": [lb, "neutral"]}).encode() + b"\n" for t, lb in ROWS
        ),
        "semicolons.csv": _csv(ROWS).replace(",", ";").encode(),
        "texts_only.csv": ("text\n" + "".join(f"{text}\n" for text, _ in ROWS)).encode(),
        "int_labels_one_missing.csv": _csv(
            [(t, ["negative", "neutral", "positive"].index(label) if i else "") for i, (t, label) in enumerate(ROWS)]
        ).encode(),
        "int_labels.jsonl": _jsonl(ROWS, str_labels=False),
        "str_labels.jsonl": _jsonl(ROWS[:9], str_labels=True),
        "missing_labels.csv": _csv(ROWS).encode() + b"no label here,\nnor here,\n",
        "empty_texts.csv": _csv(ROWS).encode() + b",positive\n,negative\n",
        "long_texts.csv": _csv(ROWS).encode() + (" ".join(["great"] * 300) + ",positive\n").encode() * 2,
        "two_rows.csv": _csv(ROWS[:2]).encode(),
        "extra_column.csv": _csv(
            [(f"{t},x{i}", label) for i, (t, label) in enumerate(ROWS)], "text,note,label"
        ).encode(),
        "renamed_label.csv": _csv(ROWS, "text,class_name").encode(),
        "score_labels.csv": _csv([(t, f"0.{i:03d}") for i, (t, _) in enumerate(ROWS)]).encode(),
        "spaced_labels.csv": _csv(
            [(t, [f" {label}", f"{label} ", label][i % 3]) for i, (t, label) in enumerate(ROWS)]
        ).encode(),  # fmt: skip
    }
    for name, content in contents.items():
        (folder / name).write_bytes(content)
    pd.DataFrame({"review": [t for t, _ in ROWS], "label": [label for _, label in ROWS]}).to_parquet(
        folder / "no_text_column.parquet"
    )
    (folder / "a_file").write_text("not a folder")
    result = folder / "existing_result"
    result.mkdir()
    (result / "ft_plugin_config.json").write_text("{}")
    return {path.name: path for path in folder.iterdir()}


# case -> (extra training flags, given the files; a fragment of the one-line error)
TRAIN_ERRORS = {
    "missing file": (lambda f: ["--train_file", str(f["empty.csv"].parent / "nope.csv")], "does not exist"),
    "empty file": (lambda f: ["--train_file", str(f["empty.csv"])], "is empty"),
    "header only": (lambda f: ["--train_file", str(f["header_only.csv"])], "no rows under its header"),
    "not UTF-8": (lambda f: ["--train_file", str(f["latin1.csv"])], "is not UTF-8 (line 62): re-save it as UTF-8"),
    "JSON object of columns": (lambda f: ["--train_file", str(f["columns.json"])], "not a list of records"),
    "JSON list of strings": (lambda f: ["--train_file", str(f["strings.json"])], "not a list of records"),
    "parquet without the column": (
        lambda f: ["--train_file", str(f["no_text_column.parquet"]), "--text_column", "text"],
        "Text column 'text' not found; the columns are ['review', 'label']: pass --text_column",
    ),
    "single class": (lambda f: ["--train_file", str(f["one_class.csv"])], "only one label"),
    "labels unseen in training": (
        lambda f: ["--train_file", str(f["crlf.csv"]), "--test_file", str(f["unseen_test.csv"])],
        "labels never seen in training: ['angry']",
    ),
    "unknown method": (lambda f: ["--method", "lorra"], "Unknown method 'lorra': choose from"),
    "a model name that is neither a folder nor a Hub id": (
        lambda f: ["--model_name_or_path", "my model"],
        "Model 'my model' is neither a local folder nor a valid Hub id ('org/name'): check the name or path.",
    ),
    "negative learning rate": (lambda f: ["--learning_rate=-1e-4"], "--learning_rate must be positive"),
    "LoRA r=0": (lambda f: ["--lora_r", "0"], "--lora_r must be a positive rank"),
    "target modules matching nothing": (
        lambda f: ["--target_modules", "q_proj", "v_proj"],
        "Pass --target_modules with names of its linear layers",
    ),
    "incompatible combination": (lambda f: ["--method", "lora+dora"], "cannot be combined"),
    "a .csv separated by semicolons": (
        lambda f: ["--train_file", str(f["semicolons.csv"])],
        "the file looks separated by semicolons: save it comma-separated as .csv, or tab-separated as .tsv.",
    ),
    "texts that are lists": (  # trained on their Python repr, "['great', 'flight']"
        lambda f: ["--train_file", str(f["list_texts.jsonl"])],
        "Text column 'text' holds lists, not text: pass --text_column with the column of texts.",
    ),
    "a number among the texts": (  # AttributeError: 'int' object has no attribute 'strip'
        lambda f: ["--train_file", str(f["mixed_texts.jsonl"])],
        "holds mixed JSON values, not text: pass --text_column with the column of texts, or make every value a string.",
    ),
    "labels that are lists": (  # TypeError: unhashable type: 'list'
        lambda f: ["--train_file", str(f["list_labels.jsonl"])],
        "Label column 'label' holds lists: give one label per row (a name or a number); multi-label data is not",
    ),
    "a best-model metric that is not measured": (  # a KeyError at the first evaluation, an epoch in
        lambda f: ["--metric_for_best_model", "f1"],
        "--metric_for_best_model f1 is not measured: choose one of accuracy, f1_macro, loss.",
    ),
    "early stopping without evaluations": (
        lambda f: ["--early_stopping_patience", "2", "--eval_strategy", "no"],
        "--early_stopping_patience needs evaluations to compare: drop --eval_strategy no",
    ),
    "a prompt without virtual tokens": (  # 0 trained without a prompt; -4 failed in torch
        lambda f: ["--method", "prefix", "--num_virtual_tokens", "0"],
        "--num_virtual_tokens must be at least 1, got 0 (try 20).",
    ),
    "a misspelled logger": (lambda f: ["--report_to", "tensorbord"], "--report_to tensorbord is unknown: choose from"),
    "a combination with an empty part": (lambda f: ["--method", "lora+"], "has an empty part: name the methods"),
    "unknown flag": (lambda f: ["--lora_rank", "8"], "Invalid arguments"),
    "a flag value of the wrong type": (
        lambda f: ["--lora_r", "abc"],  # argparse printed its usage and exited; now one line like the rest
        "Invalid arguments: argument --lora_r/--lora-r: invalid int value: 'abc' (see --help).",
    ),
    "a flag value of the wrong type with --method auto": (
        lambda f: ["--method", "auto", "--lora_r", "abc"],
        "Invalid arguments: argument --lora_r/--lora-r: invalid int value: 'abc' (see --help).",
    ),
    "--logging_dir, removed in transformers 5": (
        lambda f: ["--logging_dir=runs"],
        "transformers 5 removed --logging_dir: set the TENSORBOARD_LOGGING_DIR environment variable instead",
    ),
    "result already in --output_dir": (
        lambda f: ["--output_dir", str(f["existing_result"])],
        "already holds a trained result: pass --overwrite_output_dir",
    ),
    "unwritable --output_dir": (lambda f: ["--output_dir", str(f["a_file"] / "out")], "is not writable"),
    "--do_eval without --do_train": (lambda f: ["--do_eval"], "A recipe always trains, then evaluates and tests"),
    "batch size 0": (
        lambda f: ["--per_device_train_batch_size", "0"],
        "--per_device_train_batch_size must be at least 1, got 0",
    ),  # fmt: skip
    "zero epochs": (
        lambda f: ["--num_train_epochs", "0", "--max_steps", "-1"],
        "--num_train_epochs 0.0 trains nothing",
    ),  # fmt: skip
    "a numeric text column": (
        lambda f: ["--train_file", str(f["int_labels.csv"]), "--text_column", "label", "--label_column", "text"],
        "Text column 'label' holds int64 values, not text: pass --text_column with the column of texts",
    ),
    "text and label the same column": (
        lambda f: ["--text_column", "text", "--label_column", "text"],
        "Column 'text' is both the text and the label column",
    ),
    "too few rows to carve splits": (
        lambda f: ["--train_file", str(f["two_rows.csv"])],
        "only 2 rows, too few to carve 10% off for validation and test: add rows, or pass --validation_file",
    ),
    "a score column as labels": (
        lambda f: ["--train_file", str(f["score_labels.csv"])],
        "The label column has 60 different values in 60 training rows: it does not look like class labels",
    ),
    "a validation file without the label column": (
        lambda f: ["--validation_file", str(f["renamed_label.csv"])],
        "The validation split lacks column(s) ['label']; its columns are ['text', 'class_name']",
    ),
    "an unlabelled --test_file (run_glue's test sets)": (
        lambda f: ["--test_file", str(f["texts_only.csv"])],
        "To label unlabelled texts, train without --test_file, then run ft-plugin predict --input_file.",
    ),
    "--output_dir holding other files": (
        lambda f: ["--output_dir", str(f["a_file"].parent)],
        "is not empty (a_file, bom.csv, columns.json, ...): choose a new or empty --output_dir, or pass",
    ),
}


@pytest.fixture()
def train_argv(tiny_model_dir, files, tmp_path):
    def build(extra: list[str]) -> list[str]:
        base = ["--model_name_or_path", str(tiny_model_dir), "--train_file", str(files["crlf.csv"]),
                "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--eval_strategy", "no",
                "--save_strategy", "no", "--load_best_model_at_end", "false", "--report_to", "none"]  # fmt: skip
        return base + extra  # later flags win (argparse), so a case overrides the defaults

    return build


def _one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("ft-plugin: error:")]
    assert len(errors) == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    return errors[0]


@pytest.mark.parametrize("case", TRAIN_ERRORS)
def test_training_error_is_one_line_with_exit_status_2(case, files, train_argv, capsys):
    extra, expected = TRAIN_ERRORS[case]
    with pytest.raises(SystemExit) as exit_info:
        train_main(train_argv(extra(files)))
    assert exit_info.value.code == 2
    assert expected in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("missing.yaml", None, "Config file '{}' does not exist: check the path"),
        ("broken.yaml", "method: lora\n  lora_r: 4\n", "could not be read (mapping values are not allowed here at line 2"),
        ("broken.json", '{"method": "lora",}', "could not be read (Expecting property name enclosed in double quotes at line 1"),
    ],
)  # fmt: skip
def test_a_config_file_that_is_missing_or_malformed_is_one_line(name, content, expected, tmp_path, capsys):
    """They were a FileNotFoundError and a yaml.scanner.ScannerError traceback."""
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        train_main([str(path), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert expected.format(path) in _one_error_line(capsys.readouterr().err)


def test_an_option_of_a_method_not_in_the_run_is_named_as_ignored(caplog):
    """`--lora_r 16 --method ia3` trained IA3 as if the flag were not there, without a word."""
    from ft_plugin.recipe import parse_args

    with caplog.at_level(logging.WARNING, logger="ft_plugin"):
        parse_args(["--method", "ia3", "--lora_r", "16", "--adapter-placement", "pfeiffer", "--output_dir", "x"])
    assert "--lora_r applies to lora, dora, not ia3: ignored." in caplog.text
    assert "--adapter_placement applies to adapter, not ia3: ignored." in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ft_plugin"):
        parse_args(["--method", "lora+bitfit", "--lora_r", "16", "--target_modules", "query", "--output_dir", "x"])
    assert "ignored" not in caplog.text


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["sweep", "--n_trials", "abc"], "ft-plugin sweep: error: argument --n_trials: invalid int value: 'abc' (see ft-plugin sweep --help)."),
        (["predict", "--adapter", "out", "--outptu_file", "p.csv"], "ft-plugin predict: error: unrecognized arguments: --outptu_file"),
        (["evaluate"], "ft-plugin evaluate: error: the following arguments are required: --adapter (see ft-plugin evaluate --help)."),
    ],
)  # fmt: skip
def test_a_subcommands_argument_errors_are_one_line_naming_the_subcommand(argv, expected, capsys):
    """argparse printed the whole usage block (21 lines for sweep), and the top-level one for unknown flags."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 on a GPU is valid")
def test_bf16_without_a_gpu_says_to_add_use_cpu(files, train_argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(train_argv(["--bf16", "true"]))
    assert exit_info.value.code == 2
    assert "add --use_cpu true to train in bf16 on the CPU" in _one_error_line(capsys.readouterr().err)


# case -> (file, expected warning or None, labels)
DATA_WARNINGS = {
    "UTF-8 with BOM": ("bom.csv", None, ["negative", "neutral", "positive"]),
    "CRLF line ends": ("crlf.csv", None, ["negative", "neutral", "positive"]),
    "CRLF line ends (jsonl)": ("crlf.jsonl", None, ["0", "1", "2"]),
    "integer labels": ("int_labels.csv", None, ["0", "1", "2"]),
    "missing labels in some rows": ("missing_labels.csv", "Dropped 2 train rows without a label", None),
    "empty texts": ("empty_texts.csv", "Dropped 2 train rows with an empty text", None),
    "--max_train_samples larger than the data": (
        "crlf.csv",
        "--max_train_samples 1000 exceeds the 48 train rows: using all",
        None,
    ),
    "labels with spaces around them": ("spaced_labels.csv", None, ["negative", "neutral", "positive"]),
}


@pytest.mark.parametrize("case", DATA_WARNINGS)
def test_odd_but_usable_data_loads_with_a_warning(case, files, caplog):
    name, warning, labels = DATA_WARNINGS[case]
    limit = 1000 if case.startswith("--max_train_samples") else None
    with caplog.at_level(logging.WARNING, logger="ft_plugin"):
        data = load_data(DataArguments(train_file=str(files[name]), max_train_samples=limit))
    assert data.labels == (labels or ["negative", "neutral", "positive"])
    assert set(data.splits["train"].column_names) == {"text", "label"}
    if warning:
        assert warning in caplog.text
    assert all(text.strip() for split in data.splits.values() for text in split["text"])


def test_integer_labels_with_an_empty_cell_still_match_the_other_splits(files):
    """An empty cell makes pandas/Arrow read an integer column as floats (1.0): they are still the classes 0/1/2."""
    data = load_data(
        DataArguments(train_file=str(files["int_labels_one_missing.csv"]), test_file=str(files["int_labels.csv"]))
    )
    assert data.labels == ["0", "1", "2"]
    assert len(data.splits["train"]) + len(data.splits["validation"]) == len(ROWS) - 1  # validation carved off


def test_a_result_that_named_its_labels_1_0_still_evaluates(files):
    """Results trained before integral float labels were named "1" know them as "1.0"."""
    from ft_plugin.data import load_labelled_file

    dataset = load_labelled_file(str(files["int_labels_one_missing.csv"]), None, None, ["0.0", "1.0", "2.0"])
    assert len(dataset) == len(ROWS) - 1 and set(dataset["label"]) == {0, 1, 2}


def test_integer_labels_match_the_same_labels_written_as_strings(files):
    """Training labels 0/1/2 (integers) and test labels "0"/"1"/"2" (strings) are the same classes."""
    data = load_data(DataArguments(train_file=str(files["int_labels.jsonl"]), test_file=str(files["str_labels.jsonl"])))
    assert data.labels == ["0", "1", "2"]
    expected = [["negative", "neutral", "positive"].index(label) for _, label in ROWS[:9]]
    assert data.splits["test"]["label"] == expected


def test_very_long_texts_are_truncated_and_counted(files, tiny_model_dir, caplog):
    from transformers import AutoTokenizer

    data = load_data(DataArguments(train_file=str(files["long_texts.csv"]), test_split_percentage=5))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with caplog.at_level(logging.WARNING, logger="ft_plugin"):
        tokenized = data.tokenize(tokenizer, max_seq_length=32)
    long_rows = {name: sum(len(text.split()) > 30 for text in split["text"]) for name, split in data.splits.items()}
    assert sum(long_rows.values()) == 2
    for name, count in long_rows.items():  # the log counts them, per split
        if count:
            expected = f"{count} of {len(data.splits[name])} {name} texts are longer than --max_seq_length 32 tokens"
            assert expected in caplog.text, caplog.text
    assert max(len(ids) for split in tokenized.values() for ids in split["input_ids"]) == 32


@pytest.fixture(scope="module")
def saved_lora(tiny_model_dir, tmp_path_factory) -> Path:
    from ft_plugin.methods import apply_method
    from ft_plugin.models import load_base_model
    from ft_plugin.saving import save_result

    base, tokenizer = load_base_model(str(tiny_model_dir), ["negative", "neutral", "positive"])
    return save_result(apply_method(base, "lora"), tmp_path_factory.mktemp("lora") / "result", tokenizer)


def _broken_copy(saved: Path, tmp_path: Path, breakage: str, other_base: Path) -> Path:
    import shutil

    import torch
    from safetensors.torch import load_file

    folder = Path(shutil.copytree(saved, tmp_path / "broken"))
    weights = folder / "adapter_model.safetensors"
    if breakage == "missing weights":
        weights.unlink()
    elif breakage == "corrupted safetensors":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif breakage == "pickled weights":
        torch.save(load_file(weights), folder / "adapter_model.bin")
        weights.unlink()
    elif breakage == "adapter for another base":
        record = json.loads((folder / "ft_plugin_config.json").read_text())
        (folder / "ft_plugin_config.json").write_text(json.dumps({**record, "base_model": str(other_base)}))
    elif breakage == "no base model recorded":  # saved from a model built in code (no name_or_path)
        record = json.loads((folder / "ft_plugin_config.json").read_text())
        (folder / "ft_plugin_config.json").write_text(json.dumps({**record, "base_model": ""}))
    return folder


MODEL_ERRORS = {
    "adapter for another base": "was trained on a different base model",
    "missing weights": "has no weights file (adapter_model.safetensors): the result is incomplete",
    "corrupted safetensors": "is corrupted",
    "pickled weights": "has only pickled weights (adapter_model.bin)",
    "no base model recorded": "records no base model (saved from a model built in code",
}


@pytest.fixture(scope="module")
def other_base(tmp_path_factory) -> Path:
    """A BERT with another hidden size (and the tiny model's tokenizer files)."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("other-base")
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case", MODEL_ERRORS)
def test_broken_adapter_is_one_line_with_exit_status_2(case, saved_lora, other_base, tmp_path, capsys):
    folder = _broken_copy(saved_lora, tmp_path, case, other_base)
    assert cli_main(["predict", "--adapter", str(folder), "great flight"]) == 2
    assert MODEL_ERRORS[case] in _one_error_line(capsys.readouterr().err)


def test_saving_a_model_built_in_code_warns_that_no_base_model_is_recorded(tmp_path, caplog):
    """It used to load on the default base model and blame 'a different base model'."""
    from transformers import BertConfig, BertForSequenceClassification

    import ft_plugin

    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    model = ft_plugin.apply(BertForSequenceClassification(config), "lora")
    with caplog.at_level(logging.WARNING, logger="ft_plugin"):
        ft_plugin.save_result(model, tmp_path / "result")
    assert "records no base model, so load it with model_name_or_path=" in caplog.text
    with pytest.raises(ft_plugin.ModelError, match="records no base model"):
        ft_plugin.load(tmp_path / "result")


def test_pickled_weights_load_with_the_explicit_flag(saved_lora, other_base, tmp_path, monkeypatch, capsys):
    from ft_plugin.inference import TextClassifier

    folder = _broken_copy(saved_lora, tmp_path, "pickled weights", other_base)
    reference = TextClassifier.from_pretrained(saved_lora).predict(["great flight"])[0]
    assert TextClassifier.from_pretrained(folder, allow_pickle=True).predict(["great flight"])[0] == pytest.approx(
        reference
    )
    assert cli_main(["predict", "--adapter", str(folder), "--allow_pickle", "great flight"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["scores"] == pytest.approx(reference, abs=1e-4)
    monkeypatch.setenv("FT_PLUGIN_ALLOW_PICKLE", "1")  # the same, for tools that cannot pass the flag
    assert TextClassifier.from_pretrained(folder).predict(["great flight"])[0] == pytest.approx(reference)


def test_a_base_model_with_only_pickled_weights_needs_the_flag(tiny_model_dir, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    from ft_plugin.errors import ModelError
    from ft_plugin.models import load_base_model

    base = Path(shutil.copytree(tiny_model_dir, tmp_path / "pickled-base"))
    torch.save(load_file(base / "model.safetensors"), base / "pytorch_model.bin")
    (base / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="only pickled weights .*--allow_pickle"):
        load_base_model(str(base), ["a", "b"])
    model, _ = load_base_model(str(base), ["a", "b"], allow_pickle=True)
    reference, _ = load_base_model(str(tiny_model_dir), ["a", "b"])
    embeddings = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(model.state_dict()[embeddings], reference.state_dict()[embeddings])


def test_model_code_from_the_model_folder_never_runs_without_trust_remote_code(tiny_model_dir, tmp_path):
    """A base whose config points at its own Python file (`auto_map`): by default transformers' own class loads it
    and the folder's file never runs (with `--trust_remote_code true`, transformers would import it)."""
    import shutil

    from ft_plugin.models import load_base_model

    base = Path(shutil.copytree(tiny_model_dir, tmp_path / "custom-code-base"))
    marker = tmp_path / "the-model-code-ran"
    (base / "modeling_custom.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertForSequenceClassification as CustomModel\n"
    )
    config = json.loads((base / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_custom.CustomModel"}
    (base / "config.json").write_text(json.dumps(config))
    model, _ = load_base_model(str(base), ["a", "b"])
    assert type(model).__module__ == "transformers.models.bert.modeling_bert"
    assert not marker.exists()


def test_users_see_one_line_and_debug_shows_the_traceback(files, tmp_path):
    command = [sys.executable, str(ROOT / "recipes" / "lora_bert.py"), "--train_file", str(files["strings.json"]),
               "--output_dir", str(tmp_path / "out")]  # fmt: skip
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    user = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert user.returncode == 2
    assert "not a list of records" in _one_error_line(user.stderr)
    from ft_plugin.errors import DataError

    with pytest.raises(DataError, match="not a list of records"):  # --debug: the exception and its traceback
        train_main([*command[2:], "--debug"])


def test_too_little_disk_space_is_an_error_before_training(train_argv, monkeypatch, capsys):
    from collections import namedtuple

    import ft_plugin.recipe as recipe

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(recipe.shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
    with pytest.raises(SystemExit) as exit_info:
        train_main(train_argv([]))
    assert exit_info.value.code == 2
    assert "Not enough disk space" in _one_error_line(capsys.readouterr().err)


def test_a_folder_of_the_users_files_is_left_alone_unless_overwrite_is_given(train_argv, tmp_path, capsys):
    """run_glue's rule: a non-empty --output_dir that holds no result is refused (its README.md and config.json
    would have been replaced by the result's); --overwrite_output_dir writes into it and keeps the other files."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text('{"mine": true}')
    (folder / "notes.txt").write_text("my notes")
    with pytest.raises(SystemExit) as exit_info:
        train_main(train_argv(["--output_dir", str(folder)]))
    assert exit_info.value.code == 2 and "is not empty (config.json, notes.txt)" in _one_error_line(capsys.readouterr().err)  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "notes.txt"]
    assert (folder / "config.json").read_text() == '{"mine": true}'
    train_main(train_argv(["--output_dir", str(folder), "--overwrite_output_dir"]))
    assert (folder / "notes.txt").read_text() == "my notes" and (folder / "ft_plugin_config.json").is_file()


def test_a_max_seq_length_beyond_the_model_is_lowered_with_a_warning(train_argv, tmp_path, caplog):
    """run_glue's rule: the tiny model has 64 positions; 1000 would fail in the forward pass."""
    with caplog.at_level(logging.WARNING, logger="ft_plugin"):
        train_main(train_argv(["--max_seq_length", "1000", "--output_dir", str(tmp_path / "long")]))
    assert "--max_seq_length 1000 is larger than the model's maximum length (64): using 64" in caplog.text
    assert json.loads((tmp_path / "long" / "ft_plugin_config.json").read_text())["max_seq_length"] == 64


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_a_prompt_methods_virtual_tokens_are_kept_within_the_models_positions(
    method, files, train_argv, tmp_path, caplog
):
    """The virtual tokens take positions too (prefix tuning's shift the text's position ids): the tiny model's 64
    positions with 8 virtual tokens leave 56 for the text; 64 failed in the forward pass on long texts."""
    from ft_plugin.inference import TextClassifier

    output = tmp_path / method
    argv = ["--method", method, "--num_virtual_tokens", "8", "--max_seq_length", "1000", "--output_dir", str(output),
            "--train_file", str(files["long_texts.csv"]), "--per_device_train_batch_size", "64"]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="ft_plugin"):
        train_main(train_argv(argv))
    assert "maximum length (56, after 8 positions for the virtual tokens): using 56" in caplog.text
    assert json.loads((output / "ft_plugin_config.json").read_text())["max_seq_length"] == 56
    classifier = TextClassifier.from_pretrained(output)
    assert classifier.count_tokens("great " * 100) > 56  # truncated to 56 tokens, and predicted
    assert len(classifier.predict(["great " * 100])) == 1


def test_a_training_checkpoint_is_not_mistaken_for_a_result(saved_lora, tmp_path, capsys):
    import shutil

    checkpoint = tmp_path / "out" / "checkpoint-2"
    shutil.copytree(saved_lora, checkpoint)
    (checkpoint / "config.json").unlink()  # what a PEFT run's Trainer checkpoint lacks
    assert cli_main(["predict", "--adapter", str(checkpoint), "hello"]) == 2
    assert "it is a training checkpoint, not a result: load the run's --output_dir" in capsys.readouterr().err


def test_a_revision_with_a_local_result_folder_is_refused(saved_lora, capsys):
    # a local folder shadows the Hub repo of the same name: the revision was silently ignored
    assert cli_main(["predict", "--adapter", str(saved_lora), "--revision", "dev", "hello"]) == 2
    assert "is a local folder, and a revision applies only to Hub repos: drop --revision" in capsys.readouterr().err
    assert cli_main(["predict", "--adapter", str(saved_lora), "hello"]) == 0


def test_a_validation_file_may_have_other_columns_than_the_train_file(files):
    data = load_data(DataArguments(train_file=str(files["crlf.csv"]), validation_file=str(files["extra_column.csv"])))
    assert len(data.splits["validation"]) == len(ROWS) and data.splits["validation"].column_names == ["text", "label"]


def test_words_pandas_reads_as_missing_are_kept_as_texts_and_labels(tmp_path, caplog):
    """Only an empty cell is missing: a class called "None" and a text "N/A" are data (pandas' defaults drop both)."""
    rows = [(text, "None" if label == "neutral" else label) for text, label in ROWS] + [("N/A", "positive")] * 3
    path = tmp_path / "na_words.csv"
    path.write_text(_csv(rows) + "no label here,\n")
    with caplog.at_level(logging.WARNING, logger="ft_plugin"):
        data = load_data(DataArguments(train_file=str(path)))
    assert data.labels == ["None", "negative", "positive"]
    assert sum(len(split) for split in data.splits.values()) == len(rows)  # only the empty label is dropped
    assert "N/A" in [text for split in data.splits.values() for text in split["text"]]
    assert "Dropped 1 train rows without a label" in caplog.text
