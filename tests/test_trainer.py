"""The recipes' Trainer: evaluation longest first, predictions in the dataset's order."""

from __future__ import annotations

import csv

import numpy as np
import torch

from ft_plugin.recipe import build_trainer, parse_args

from .conftest import make_texts


def test_evaluation_runs_longest_first_and_predict_keeps_the_dataset_order(tiny_model_dir, tmp_path):
    data = tmp_path / "varied.csv"
    with open(data, "w", newline="") as handle:  # texts of 6 to 20 words, so the order matters
        csv.writer(handle).writerows(
            [("text", "label"), *((f"{t} {'so ' * (i % 15)}", y) for i, (t, y) in enumerate(make_texts(300)))]
        )
    trainer = build_trainer(
        *parse_args(
            ["--model_name_or_path", str(tiny_model_dir), "--train_file", str(data), "--output_dir", str(tmp_path / "out"),
             "--method", "lora", "--per_device_eval_batch_size", "4", "--report_to", "none"]
        )
    )  # fmt: skip
    test = trainer.ft_test_dataset
    lengths = [len(ids) for ids in test["input_ids"][:]]
    assert len(set(lengths)) > 5
    loader = trainer.get_test_dataloader(test)
    assert [int(n) for batch in loader for n in batch["attention_mask"].sum(1)] == sorted(lengths, reverse=True)

    output = trainer.predict(test)
    assert output.label_ids.tolist() == test["labels"][:]
    model = trainer.model.eval()
    with torch.no_grad():  # one text at a time, in the dataset's order: no padding, no reordering
        one_by_one = [model(input_ids=torch.tensor([ids])).logits[0].numpy() for ids in test["input_ids"][:]]
    np.testing.assert_allclose(output.predictions, np.stack(one_by_one), atol=1e-4)
    assert trainer.evaluate(test)["eval_loss"] == output.metrics["test_loss"]
