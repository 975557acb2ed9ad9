"""`--class_weights`: the weights, the loss the Trainer optimises with them, gradient accumulation, the record."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ft_plugin.card import render_card
from ft_plugin.errors import DataError, FtPluginError
from ft_plugin.recipe import build_trainer, parse_args
from ft_plugin.trainer import class_weights_for, parse_class_weights

from .conftest import make_texts


@pytest.fixture(scope="module")
def imbalanced_csv(tmp_path_factory):
    """120 negative, 60 neutral, 20 positive texts (make_texts cycles the labels, so take what each needs)."""
    wanted = {"negative": 120, "neutral": 60, "positive": 20}
    rows = []
    for text, label in make_texts(600):
        if wanted[label]:
            rows.append((text, label))
            wanted[label] -= 1
    path = tmp_path_factory.mktemp("imbalanced") / "train.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([("text", "label"), *rows])
    return path


def _argv(tiny_model_dir, data, output_dir, *more):
    return ["--model_name_or_path", str(tiny_model_dir), "--train_file", str(data), "--output_dir", str(output_dir),
            "--method", "lora", "--report_to", "none", *more]  # fmt: skip


def test_balanced_weights_are_inverse_frequencies_with_mean_one_and_named_weights_default_to_one():
    labels = ["negative", "neutral", "positive"]
    ids = [0] * 60 + [1] * 30 + [2] * 10
    balanced = class_weights_for("balanced", labels, ids)
    torch.testing.assert_close(balanced, torch.tensor([100 / 180, 100 / 90, 100 / 30]))
    assert balanced[torch.tensor(ids)].mean().item() == pytest.approx(1.0)
    named = class_weights_for("positive=3, neutral = 0.5", labels, ids)
    torch.testing.assert_close(named, torch.tensor([1.0, 0.5, 3.0]))
    assert class_weights_for(None, labels, ids) is None and class_weights_for("none", labels, ids) is None


@pytest.mark.parametrize("value", ["balance", "positive", "positive=0", "positive=-1", "positive=x", "=2", "a=inf"])
def test_a_malformed_value_is_one_line_before_the_data_is_read(value):
    with pytest.raises(FtPluginError, match="--class_weights .* is not understood: use balanced, or label=weight"):
        parse_class_weights(value)
    with pytest.raises(FtPluginError, match="is not understood"):  # the data file does not even exist
        parse_args(["--train_file", "/nonexistent/train.csv", "--class_weights", value])


def test_a_label_the_data_does_not_have_is_named_with_the_real_labels(tiny_model_dir, imbalanced_csv, tmp_path):
    with pytest.raises(DataError, match=r"does not have: \['postive'\]; its labels are \['negative', 'neutral'"):
        build_trainer(*parse_args(_argv(tiny_model_dir, imbalanced_csv, tmp_path, "--class_weights", "postive=3")))


def test_the_trainer_optimises_the_weighted_loss_with_balanced_weights(tiny_model_dir, imbalanced_csv, tmp_path):
    argv = _argv(tiny_model_dir, imbalanced_csv, tmp_path / "out", "--class_weights", "balanced")
    trainer = build_trainer(*parse_args(argv))
    train_labels = torch.tensor(trainer.train_dataset["labels"][:])
    counts = torch.bincount(train_labels, minlength=3).float()
    expected_weights = len(train_labels) / (3 * counts)
    torch.testing.assert_close(trainer.ft_class_weights, expected_weights)
    assert trainer.ft_class_weights[2] > 4 * trainer.ft_class_weights[0]  # the rare class weighs most

    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    per_example = F.cross_entropy(logits, batch["labels"], reduction="none")
    torch.testing.assert_close(loss, (per_example * expected_weights[batch["labels"]]).mean())
    assert not torch.isclose(loss, per_example.mean())  # the batch mixes classes: weighting changes the loss


def test_gradient_accumulation_gives_the_full_batch_step(tiny_model_dir, imbalanced_csv, tmp_path):
    """One optimizer step on 8 examples, as one batch of 8 or as 2 accumulated batches of 4: same weights after it
    (the weighted sum is divided by the accumulated batch's size, not averaged per micro-batch). SGD, so that the
    step is the gradient itself (Adam's first step is lr x sign(gradient), which float noise flips near zero), and
    no LoRA dropout (its random masks would differ between the two) nor clipping (it would hide a wrong scale)."""

    def lora_weights_after_one_step(batch_size: int, accumulation: int, name: str) -> dict:
        argv = _argv(tiny_model_dir, imbalanced_csv, tmp_path / name, "--class_weights", "balanced", "--max_steps", "1",
                     "--per_device_train_batch_size", str(batch_size), "--gradient_accumulation_steps",
                     str(accumulation), "--train_sampling_strategy", "sequential", "--optim", "sgd",
                     "--learning_rate", "0.5", "--lora_dropout", "0", "--max_grad_norm", "0", "--eval_strategy", "no",
                     "--save_strategy", "no", "--load_best_model_at_end", "false")  # fmt: skip
        trainer = build_trainer(*parse_args(argv))
        trainer.train()
        return {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}

    whole, accumulated = lora_weights_after_one_step(8, 1, "whole"), lora_weights_after_one_step(4, 2, "accumulated")
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], atol=1e-5, rtol=1e-4)


def test_the_cli_trains_with_named_weights_and_records_them_on_the_card(tiny_model_dir, imbalanced_csv, tmp_path):
    output = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "ft_plugin.cli", "train", *_argv(tiny_model_dir, imbalanced_csv, output,
         "--class_weights", "positive=4", "--num_train_epochs", "1")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Class weights: negative 1, neutral 1, positive 4" in run.stderr
    record = json.loads((output / "ft_plugin_config.json").read_text())
    assert record["hyperparameters"]["class_weights"] == {"negative": 1.0, "neutral": 1.0, "positive": 4.0}
    card = str(render_card(output))  # what `ft-plugin push` and `ft-plugin export` write as README.md
    assert "| class_weights | `{'negative': 1.0, 'neutral': 1.0, 'positive': 4.0}` |" in card
