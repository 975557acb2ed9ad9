"""The recipes' Trainer: evaluation longest first, predictions in the dataset's order, attention dropout."""

from __future__ import annotations

import csv
import json
import shutil
import warnings

import numpy as np
import pytest
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


def test_adalora_loads_an_earlier_best_checkpoint_and_saves_it_cut_to_its_own_ranks(tiny_model_dir, tiny_csv, tmp_path):
    """AdaLoRA's ranks change during training: loading an earlier "best" checkpoint failed with a size mismatch (and
    load-best was turned off). The best checkpoint now loads with its rank pattern, and the result is cut to it."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from ft_plugin.adalora_checkpoint import ADALORA_STATE, full_rank_adapter
    from ft_plugin.saving import load, save_result

    argv = ["--method", "adalora", "--model_name_or_path", str(tiny_model_dir), "--train_file", str(tiny_csv),
            "--num_train_epochs", "3", "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "out"),
            "--eval_strategy", "epoch", "--save_strategy", "epoch", "--load_best_model_at_end", "true",
            "--metric_for_best_model", "loss", "--greater_is_better", "true", "--report_to", "none"]  # fmt: skip
    trainer = build_trainer(*parse_args(argv))  # the highest loss counts as "best": the first epoch's checkpoint
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and best.endswith(f"checkpoint-{trainer.state.global_step // 3}")
    best_pattern = torch.load(f"{best}/{ADALORA_STATE}", weights_only=True)["rank_pattern"]
    assert best_pattern and not all(all(kept) for kept in best_pattern.values())  # saved after some ranks were cut
    assert trainer.model.peft_config["default"].rank_pattern == best_pattern
    saved = load_file(f"{best}/adapter_model.safetensors")  # full rank: the model now holds exactly these weights
    with full_rank_adapter(trainer.model):
        weights = get_peft_model_state_dict(trainer.model)
    assert saved.keys() == weights.keys()
    for name, value in saved.items():
        torch.testing.assert_close(weights[name], value, msg=name)

    save_result(trainer.model, tmp_path / "result", trainer.processing_class)  # as the recipe saves its result
    ranks = [t.shape[0] for name, t in load_file(tmp_path / "result" / "adapter_model.safetensors").items()
             if "lora_E" in name]  # fmt: skip
    assert ranks == [sum(kept) for kept in best_pattern.values()]  # the result is cut to the best checkpoint's ranks
    with warnings.catch_warnings(record=True) as caught:  # no false alarm from PEFT that the rank pattern was ignored
        warnings.simplefilter("always")
        result = load(tmp_path / "result")
    assert not [w for w in caught if "rank_pattern" in str(w.message)]
    trainer.model.eval()
    batch = next(iter(trainer.get_eval_dataloader()))
    batch.pop("labels")
    with torch.no_grad():  # the result, cut to the best's ranks, predicts as the model that was evaluated best
        torch.testing.assert_close(result(**batch).logits, trainer.model(**batch).logits)


def test_adalora_resumes_after_its_ranks_were_cut_exactly_as_an_uninterrupted_run(tiny_model_dir, tiny_csv, tmp_path):
    """PEFT saves AdaLoRA cut to its current ranks; a resumed run (full-rank modules and optimizer) failed on the
    sizes once the allocator had cut any. Checkpoints keep full rank and the allocator's state: resume is exact."""
    from ft_plugin.adalora_checkpoint import ADALORA_STATE
    from ft_plugin.auto import StopAtStep

    def trainer_in(folder: str, callbacks=()):
        argv = ["--method", "adalora", "--model_name_or_path", str(tiny_model_dir), "--train_file", str(tiny_csv),
                "--output_dir", str(tmp_path / folder), "--num_train_epochs", "2", "--per_device_train_batch_size", "8",
                "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
                "--report_to", "none"]  # fmt: skip
        return build_trainer(*parse_args(argv), callbacks=list(callbacks))

    whole = trainer_in("whole")
    whole.train()
    config = whole.model.peft_config["default"]
    trained = {name: p for name, p in whole.model.named_parameters() if p.requires_grad}
    final_phase = config.total_step - config.tfinal
    # amid the allocation (some ranks already cut), and in the final phase (the pattern fixed, only masked)
    for stop in ((config.tinit + final_phase) // 2, final_phase + 2):
        folder = f"part-{stop}"
        trainer_in(folder, [StopAtStep(stop)]).train()
        checkpoint = tmp_path / folder / f"checkpoint-{stop}"
        saved_pattern = torch.load(checkpoint / ADALORA_STATE, weights_only=True)["rank_pattern"]
        assert saved_pattern and not all(all(kept) for kept in saved_pattern.values())
        resumed = trainer_in(folder)
        resumed.train(resume_from_checkpoint=str(checkpoint))
        again = dict(resumed.model.named_parameters())
        for name, parameter in trained.items():
            torch.testing.assert_close(again[name], parameter, msg=f"{name} resumed at step {stop}")
        assert resumed.model.peft_config["default"].rank_pattern == config.rank_pattern


def test_only_the_saving_process_writes_adalora_state_into_a_checkpoint(
    tiny_model_dir, tiny_csv, tmp_path, monkeypatch
):
    """Under DDP the Trainer saves a checkpoint's files on one process; another process that wrote AdaLoRA's
    allocator state too raced it to a folder that did not exist yet (a crash seen with 2 processes)."""
    from transformers import TrainingArguments

    from ft_plugin.adalora_checkpoint import ADALORA_STATE

    argv = ["--method", "adalora", "--model_name_or_path", str(tiny_model_dir), "--train_file", str(tiny_csv),
            "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
            "--load_best_model_at_end", "false", "--report_to", "none"]  # fmt: skip
    trainer = build_trainer(*parse_args(argv))
    trainer.train()
    monkeypatch.setattr(TrainingArguments, "should_save", property(lambda self: False))  # as on a process but the first
    trainer._save_checkpoint(trainer.model, trial=None)  # the Trainer still writes this process's RNG state there
    assert not (tmp_path / "out" / "checkpoint-1" / ADALORA_STATE).exists()


def _saved_attention_matrices(model, batch: dict) -> int:
    """How many batch x heads x length x length tensors a training forward pass keeps for the backward."""
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(t.shape) or t, lambda t: t):
        model.train()(**batch)
    size, length = batch["input_ids"].shape
    return sum(1 for shape in shapes if tuple(shape[-2:]) == (length, length) and shape.numel() >= size * length**2)


def test_attention_dropout_zero_keeps_no_attention_matrices_for_the_backward(tiny_model_dir, tiny_csv, tmp_path):
    base = tmp_path / "dropout-base"  # the tiny model with BERT's usual attention dropout
    shutil.copytree(tiny_model_dir, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "attention_probs_dropout_prob": 0.1}))

    def trainer_for(*flags: str):
        return build_trainer(
            *parse_args(
                ["--model_name_or_path", str(base), "--train_file", str(tiny_csv), "--output_dir",
                 str(tmp_path / "out"), "--report_to", "none", *flags]
            )
        )  # fmt: skip

    default, no_dropout = trainer_for(), trainer_for("--attention_dropout", "0")
    batch = next(iter(default.get_train_dataloader()))
    assert default.model.config.attention_probs_dropout_prob == 0.1
    assert _saved_attention_matrices(default.model, batch) > 0  # the math path: probabilities kept per layer
    assert no_dropout.model.config.attention_probs_dropout_prob == 0.0
    assert _saved_attention_matrices(no_dropout.model, batch) == 0  # the fused kernel


def test_attention_dropout_out_of_range_is_one_line(tmp_path):
    from ft_plugin.errors import FtPluginError

    with pytest.raises(FtPluginError, match=r"--attention_dropout must be in \[0, 1\), got 1.5"):
        parse_args(["--attention_dropout", "1.5", "--output_dir", str(tmp_path)])
