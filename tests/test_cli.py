"""The `ft-plugin` console script: methods table, train, predict, evaluate, and one-line errors with exit 2."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ft_plugin.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]


def ft_plugin(*args: str) -> subprocess.CompletedProcess:
    """`ft-plugin ARGS` in this process: `ft_plugin.cli.main`, which the console script calls (a fresh interpreter
    costs ~10 s here; the script itself runs in test_bad_input_through_the_console_script_...)."""
    from ft_plugin.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # `train` exits like the recipes on bad input
            code = exit_.code
    return subprocess.CompletedProcess(["ft-plugin", *args], code, stdout.getvalue(), stderr.getvalue())


def console_script(*args: str) -> subprocess.CompletedProcess:
    """`ft-plugin ARGS` as users run it: a process of its own."""
    command = [sys.executable, "-m", "ft_plugin.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tiny_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "lora"
    result = ft_plugin(
        "train", "--method", "lora", "--model_name_or_path", str(tiny_model_dir), "--train_file", str(tiny_csv),
        "--output_dir", str(out), "--num_train_epochs", "8", "--per_device_train_batch_size", "16",
        "--learning_rate", "2e-2", "--save_strategy", "no", "--load_best_model_at_end", "false", "--eval_strategy", "no",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_methods_lists_every_method_with_its_trainable_share(tiny_model_dir):
    result = ft_plugin("methods", "--model_name_or_path", str(tiny_model_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:] if line.strip()}
    assert set(METHODS) <= set(rows)
    assert rows["full"][3] == "100.000%"
    assert 0 < float(rows["lora"][3].rstrip("%")) < 100


def test_predict_texts_and_file(trained, tmp_path):
    result = ft_plugin("predict", "--adapter", str(trained), "thanks great love", "awful late broken")
    assert result.returncode == 0, result.stderr[-2000:]
    first, second = (json.loads(line) for line in result.stdout.strip().splitlines())
    assert (first["label"], second["label"]) == ("positive", "negative")
    assert abs(sum(first["scores"].values()) - 1) < 1e-3

    inputs = tmp_path / "in.csv"
    inputs.write_text("id,text,label\n1,love great thanks,gold-a\n2,hate terrible bad,gold-b\n")
    output = tmp_path / "preds.csv"
    result = ft_plugin("predict", "--adapter", str(trained), "--input_file", str(inputs), "--output_file", str(output))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(output.open()))
    assert [row["predicted_label"] for row in rows] == ["positive", "negative"] and rows[0]["id"] == "1"
    assert [row["label"] for row in rows] == ["gold-a", "gold-b"]  # the input's own labels are kept
    assert {"score_negative", "score_neutral", "score_positive"} <= set(rows[0])

    reviews = tmp_path / "reviews.tsv"  # another text column name and format: kept as they are
    reviews.write_text("review\tid\nlove great thanks\t7\n")
    as_jsonl = tmp_path / "preds.jsonl"
    argv = ["predict", "--adapter", str(trained), "--input_file", str(reviews), "--text_column", "review"]
    result = ft_plugin(*argv, "--output_file", str(as_jsonl))
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = [json.loads(line) for line in as_jsonl.read_text().splitlines()]
    assert row["review"] == "love great thanks" and row["id"] == 7 and row["predicted_label"] == "positive"
    assert all(len(str(row[f"score_{label}"]).split(".")[-1]) <= 4 for label in ("negative", "neutral", "positive"))
    assert_one_error_line(ft_plugin(*argv, "--output_file", str(tmp_path / "preds.xlsx")), "name it .csv, .tsv")


def test_predict_refuses_a_text_column_of_numbers_in_one_line(trained, tmp_path):
    """It was a tokenizer ValueError traceback; training and evaluate already said so in one line."""
    inputs = tmp_path / "ids.csv"
    inputs.write_text("id,body\n1,love great thanks\n2,late bag\n")
    argv = ["predict", "--adapter", str(trained), "--input_file", str(inputs), "--output_file", str(tmp_path / "p.csv")]
    result = ft_plugin(*argv, "--text_column", "id")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Text column 'id' holds int64 values, not text: pass --text_column" in result.stderr
    assert ft_plugin(*argv, "--text_column", "body").returncode == 0


@pytest.mark.parametrize("size", ["0", "-1"])
def test_evaluate_refuses_a_batch_size_below_1_in_one_line(trained, size):
    """0 was a ValueError from range(), -1 a ZeroDivisionError inside the accuracy metric."""
    result = ft_plugin("evaluate", "--adapter", str(trained), "--batch_size", size)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--batch_size must be at least 1, got {size}." in result.stderr


def test_predict_never_writes_over_its_input_nor_an_existing_file_unasked(trained, tmp_path):
    inputs = tmp_path / "in.csv"
    inputs.write_text("text,label\nlove great thanks,positive\n")
    original = inputs.read_text()
    missing = tmp_path / "no-such-folder" / "p.csv"  # refused before the model loads, not after every prediction
    result = ft_plugin("predict", "--adapter", str(trained), "--input_file", str(inputs), "--output_file", str(missing))
    assert (
        result.returncode == 2
        and "the folder '" in result.stderr
        and "does not exist: create it first" in result.stderr
    )
    result = ft_plugin("predict", "--adapter", str(trained), "--input_file", str(inputs), "--output_file", str(inputs))
    assert result.returncode == 2 and "is the input file: choose another --output_file" in result.stderr
    assert inputs.read_text() == original
    output = tmp_path / "preds.csv"
    output.write_text("keep me\n")
    argv = ["predict", "--adapter", str(trained), "--input_file", str(inputs), "--output_file", str(output)]
    result = ft_plugin(*argv)
    assert result.returncode == 2 and "already exists: pass --overwrite_output_file" in result.stderr
    assert output.read_text() == "keep me\n"
    assert ft_plugin(*argv, "--overwrite_output_file").returncode == 0
    assert "predicted_label" in output.read_text()
    clashing = tmp_path / "clash.csv"
    clashing.write_text("text,predicted_label\nlove great thanks,x\n")
    result = ft_plugin("predict", "--adapter", str(trained), "--input_file", str(clashing), "--output_file", str(tmp_path / "c.csv"))  # fmt: skip
    assert result.returncode == 2 and "already has column(s) ['predicted_label']" in result.stderr


def test_evaluate_on_a_labelled_file(trained, tiny_csv):
    result = ft_plugin("evaluate", "--adapter", str(trained), "--test_file", str(tiny_csv))
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout[result.stdout.index("{") :])
    assert metrics["examples"] == 240 and metrics["accuracy"] > 0.9


def test_evaluate_without_a_file_scores_the_runs_own_test_split(trained, tiny_csv, tmp_path):
    """Not the embedded tweets whatever the run trained on: the split is rebuilt from the result's record."""
    import shutil

    result = ft_plugin("evaluate", "--adapter", str(trained))
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout[result.stdout.index("{") :])
    recorded = json.loads((trained / "test_results.json").read_text())
    assert metrics["examples"] == 24  # 10 % of the 240 rows of the run's file, carved as in training
    assert metrics["accuracy"] == pytest.approx(recorded["test_accuracy"])

    moved = tmp_path / "moved"  # the same result where its training file cannot be found again
    shutil.copytree(trained, moved)
    record = json.loads((moved / "ft_plugin_config.json").read_text())
    record["data"]["train_file"] = str(tmp_path / "gone.csv")
    (moved / "ft_plugin_config.json").write_text(json.dumps(record))
    assert_one_error_line(ft_plugin("evaluate", "--adapter", str(moved)), "Or pass --test_file.")
    del record["data"]  # saved before the data flags were recorded
    (moved / "ft_plugin_config.json").write_text(json.dumps(record))
    assert_one_error_line(ft_plugin("evaluate", "--adapter", str(moved)), "does not record its test split")


def test_a_model_of_text_pairs_is_evaluated_and_used_on_pairs(tiny_model_dir, tmp_path):
    """The second texts reach evaluate and predict (they were dropped: the model saw the first texts only)."""
    from .conftest import make_texts

    rows = make_texts(120)
    pairs = tmp_path / "pairs.csv"
    with pairs.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["premise", "hypothesis", "label"])
        writer.writerows((text, text[::-1], label) for text, label in rows)
    out = tmp_path / "out"
    result = ft_plugin(
        "train", "--model_name_or_path", str(tiny_model_dir), "--train_file", str(pairs), "--text_column", "premise",
        "--text_pair_column", "hypothesis", "--output_dir", str(out), "--max_steps", "4", "--eval_strategy", "no",
        "--save_strategy", "no", "--load_best_model_at_end", "false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "ft_plugin_config.json").read_text())["text_pairs"] is True

    result = ft_plugin("evaluate", "--adapter", str(out))  # the run's own split, pairs included
    assert result.returncode == 0, result.stderr[-2000:]
    recorded = json.loads((out / "test_results.json").read_text())
    assert json.loads(result.stdout[result.stdout.index("{") :])["accuracy"] == pytest.approx(recorded["test_accuracy"])
    argv = ["--test_file", str(pairs), "--text_column", "premise", "--label_column", "label"]
    assert_one_error_line(ft_plugin("evaluate", "--adapter", str(out), *argv), "classifies pairs of texts")
    assert ft_plugin("evaluate", "--adapter", str(out), *argv, "--text_pair_column", "hypothesis").returncode == 0

    assert_one_error_line(ft_plugin("predict", "--adapter", str(out), "one text"), "give the second texts too")
    output = tmp_path / "predictions.csv"
    argv = ["predict", "--adapter", str(out), "--input_file", str(pairs), "--text_column", "premise"]
    result = ft_plugin(*argv, "--text_pair_column", "hypothesis", "--output_file", str(output))
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list(csv.DictReader(output.open()))) == len(rows)


def assert_one_error_line(result: subprocess.CompletedProcess, message: str) -> None:
    """Exit status 2, exactly one `ft-plugin: error:` line naming the problem, no traceback."""
    assert result.returncode == 2, (result.stdout[-500:], result.stderr[-2000:])
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("ft-plugin: error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--method", "nope"], "Unknown method 'nope': choose from full, freeze, lora"),
        (["train", "--train_file", "missing.csv"], "Data file 'missing.csv' does not exist"),
        (["train", "--lora_r", "0"], "--lora_r must be a positive rank"),
        (["train", "--learning_rate", "-1"], "--learning_rate must be positive"),
        (["predict", "--adapter", "no/such/folder", "hi"], "does not exist"),
        (["predict", "--adapter", str(ROOT / "recipes"), "hi"], "is not an ft-plugin result"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    """`ft_plugin.cli.main` in this process (what the console script calls); one case below runs the real script."""
    assert_one_error_line(ft_plugin(*args), message)


def test_bad_input_through_the_console_script_is_one_line_without_a_traceback():
    assert_one_error_line(console_script("train", "--method", "nope"), "Unknown method 'nope'")


def test_wrong_base_model_for_an_adapter_is_refused(trained):
    from ft_plugin import ModelError, load

    with pytest.raises(ModelError, match="different base model"):
        load(trained, model_name_or_path="minilm-l6")


def test_setup_registers_the_embedded_model_for_offline_hub_id_loading(tmp_path):
    import os

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    load = "from transformers import AutoConfig; print(AutoConfig.from_pretrained('sentence-transformers/all-MiniLM-L6-v2').hidden_size)"
    before = subprocess.run([sys.executable, "-c", load], env=env, capture_output=True, text=True)
    assert before.returncode != 0, "the fresh cache must not know the model yet"
    setup = subprocess.run([sys.executable, "-m", "ft_plugin.cli", "setup"], env=env, capture_output=True, text=True)
    assert setup.returncode == 0 and "sentence-transformers/all-MiniLM-L6-v2" in setup.stdout, setup.stderr[-2000:]
    after = subprocess.run([sys.executable, "-c", load], env=env, capture_output=True, text=True)
    assert after.returncode == 0 and after.stdout.strip() == "384", after.stderr[-2000:]


def test_report_to_tensorboard_writes_event_files(tiny_model_dir, tiny_csv, tmp_path):
    out = tmp_path / "tb"
    result = ft_plugin(
        "train", "--method", "bitfit", "--model_name_or_path", str(tiny_model_dir), "--train_file", str(tiny_csv),
        "--output_dir", str(out), "--max_steps", "3", "--logging_steps", "1", "--report_to", "tensorboard",
        "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(out.rglob("events.out.tfevents.*")), "tensorboard event files are written"


def test_int8_quantized_prediction_agrees_with_full_precision(trained, tiny_csv):
    """`--quantize int8` swaps every linear layer for a dynamically quantized one and keeps the predictions."""
    from torch import nn

    from ft_plugin.inference import TextClassifier

    full = TextClassifier.from_pretrained(trained)
    int8 = TextClassifier.from_pretrained(trained, quantize="int8")
    assert not any(type(module) is nn.Linear for module in int8.model.modules())
    assert any(type(module) is nn.Linear for module in full.model.modules())
    texts = [row[0] for row in csv.reader(tiny_csv.open())][1:]
    assert (int8.predict_proba(texts).argmax(-1) == full.predict_proba(texts).argmax(-1)).float().mean() > 0.95

    result = ft_plugin("evaluate", "--adapter", str(trained), "--test_file", str(tiny_csv), "--quantize", "int8")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout[result.stdout.index("{") :])["accuracy"] > 0.9


@pytest.mark.parametrize("method", ["lora+bitfit", "adapter+lora"])
def test_a_combinations_result_merges_its_peft_layers_and_quantizes(method, tiny_model_dir, tmp_path):
    """A combination loads as a transformers model holding PEFT's LoRA/BEFT layers: they are merged like a
    PeftModel's (int8 quantization used to fail on them: 'function' object has no attribute 'dtype')."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    import ft_plugin as library
    from ft_plugin.inference import TextClassifier
    from ft_plugin.models import load_base_model

    torch.manual_seed(0)
    base, tokenizer = load_base_model(str(tiny_model_dir), ["negative", "neutral", "positive"])
    model = library.apply(base, method)
    with torch.no_grad():  # as if trained: LoRA's B starts at zero, which would make merging trivially exact
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.normal_(0, 0.05)
    library.save_result(model, tmp_path, tokenizer)
    texts = ["great flight thanks", "the bag is lost again", "seat and gate"]
    unmerged = TextClassifier.from_pretrained(tmp_path, merge=False)
    merged = TextClassifier.from_pretrained(tmp_path)
    assert any(isinstance(m, BaseTunerLayer) for m in unmerged.model.modules())
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.model.modules())
    torch.testing.assert_close(merged.predict_proba(texts), unmerged.predict_proba(texts), rtol=1e-4, atol=1e-5)
    int8 = TextClassifier.from_pretrained(tmp_path, quantize="int8")
    assert (int8.predict_proba(texts) - unmerged.predict_proba(texts)).abs().max() < 0.05


@pytest.mark.parametrize("method", ["ia3", "bitfit", "lora"])
def test_a_result_whose_head_is_not_a_linear_layer_merges(method, tiny_model_dir, tmp_path):
    """RoBERTa's head (`classifier`: dense + out_proj) is no `nn.Linear`: PEFT's IA3/BEFT unloading copied the
    wrapper's `weight` onto it and failed (AttributeError), so `predict` and `export --merged` did too."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    import ft_plugin as library
    from ft_plugin.inference import TextClassifier

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = RobertaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=66, pad_token_id=0, num_labels=3,
        id2label={0: "negative", 1: "neutral", 2: "positive"}, label2id={"negative": 0, "neutral": 1, "positive": 2},
    )  # fmt: skip
    torch.manual_seed(0)
    RobertaForSequenceClassification(config).save_pretrained(tmp_path / "base")
    model = library.apply(RobertaForSequenceClassification.from_pretrained(tmp_path / "base"), method)
    with torch.no_grad():  # as if trained: merging an untrained IA3/LoRA layer would be trivially exact
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.add_(torch.randn_like(parameter) * 0.05)
    library.save_result(model, tmp_path / "result", tokenizer)
    texts = ["great flight thanks", "the bag is lost again", "seat and gate"]
    unmerged = TextClassifier.from_pretrained(tmp_path / "result", merge=False)
    merged = TextClassifier.from_pretrained(tmp_path / "result")
    unwrapped = (BaseTunerLayer, AuxiliaryTrainingWrapper)
    assert not any(isinstance(m, unwrapped) for m in merged.model.modules())
    torch.testing.assert_close(merged.predict_proba(texts), unmerged.predict_proba(texts), rtol=1e-4, atol=1e-5)
    exported = ft_plugin("export", str(tmp_path / "result"), "--merged", "--to", str(tmp_path / "merged"))
    assert exported.returncode == 0, exported.stderr[-2000:]


def test_int8_quantization_of_an_unmerged_adapter_is_refused_in_one_line(trained):
    from ft_plugin import ModelError
    from ft_plugin.inference import TextClassifier

    with pytest.raises(ModelError, match="needs the adapter merged"):
        TextClassifier.from_pretrained(trained, merge=False, quantize="int8")
    with pytest.raises(ModelError, match="Unknown quantization 'int4'"):
        TextClassifier.from_pretrained(trained, quantize="int4")


def test_train_help_lists_every_recipe_flag_and_debug_before_train_shows_the_traceback(tiny_model_dir):
    result = ft_plugin("train", "--help")
    assert result.returncode == 0
    flags = ("--train_file", "--lora_r", "--class_weights", "--learning_rate", "--per_device_train_batch_size",
             "--auto_methods", "--auto_eta", "--auto_horizon", "--auto_metric")  # fmt: skip
    for flag in flags:
        assert flag in result.stdout, flag
    from ft_plugin.cli import main
    from ft_plugin.errors import MethodError

    with pytest.raises(MethodError, match="Unknown method 'lorra'"):  # the global flag reaches the recipe
        main(["--debug", "train", "--method", "lorra", "--model_name_or_path", str(tiny_model_dir)])


def test_the_result_folder_holds_ft_plugins_model_card(trained):
    card = (trained / "README.md").read_text()
    assert card.startswith("---\n") and "## Results" in card and "## How to use" in card
    assert "More Information Needed" not in card  # not the blank template save_pretrained writes
