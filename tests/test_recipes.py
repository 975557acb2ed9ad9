"""Recipes, their YAML configs and the Accelerate configs: all parse, stay short, and run on a tiny model."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from ft_plugin.errors import MethodError
from ft_plugin.methods import METHODS, parse_method
from ft_plugin.recipe import parse_args

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*_bert.py"))
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((ROOT / "accelerate_configs").glob("*.yaml"))


def recipe_method(recipe: Path) -> str:
    return recipe.read_text().split('run_recipe("')[1].split('"')[0]


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_is_short_and_has_a_config(recipe):
    assert len(recipe.read_text().splitlines()) <= 30
    parse_method(recipe_method(recipe))
    assert (ROOT / "recipes" / "configs" / f"{recipe.stem}.yaml").is_file()


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_parses_into_the_recipe_arguments(config):
    recipe = ROOT / "recipes" / f"{config.stem}.py"
    model_args, data_args, method_args, training_args = parse_args([str(config)], method=recipe_method(recipe))
    assert model_args.method == recipe_method(recipe)
    assert training_args.output_dir.startswith("outputs/")
    assert data_args.max_train_samples and training_args.learning_rate > 0


def test_flags_after_a_config_file_override_it():
    _, data_args, method_args, training_args = parse_args(
        [str(ROOT / "recipes/configs/lora_bert.yaml"), "--lora_r", "4"]
    )
    assert method_args.lora_r == 4 and data_args.max_train_samples == 4000  # the flag, and the file's own value
    assert training_args.learning_rate == 2e-3


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], ("epoch", None, "epoch", 500, True)),  # the recipe's default: evaluate, save and keep the best epoch
        (["--eval_strategy", "no"], ("no", None, "epoch", 500, False)),  # run_glue's flag: refused before
        (["--eval_strategy", "steps", "--eval_steps", "5"], ("steps", 5, "steps", 5, True)),  # refused before
        (["--eval-strategy=steps"], ("steps", 10, "steps", 10, True)),  # every `logging_steps`, the Trainer's default
        (["--save_strategy", "steps", "--save_steps", "4"], ("steps", 4, "steps", 4, True)),
        (["--save_strategy", "no"], ("epoch", None, "no", 500, False)),
        (["--save_strategy", "steps", "--eval_steps", "30"], ("steps", 30, "steps", 30, True)),
        (["--save_strategy", "steps", "--logging_steps", "30"], ("steps", 30, "steps", 30, True)),
        (["--load_best_model_at_end", "--eval_strategy", "steps"], ("steps", 10, "steps", 10, True)),  # a bare flag
        (["--eval_strategy", "no", "--load_best_model_at_end", "true"], None),  # asked for: the Trainer's refusal
        (["--eval_strategy"], None),  # no value: one line (argparse printed its usage and exited)
    ],
)
def test_checkpointing_follows_the_users_evaluation_or_saving_strategy(flags, expected):
    from ft_plugin.recipe import parse_checked_args

    if flags == ["--eval_strategy"]:
        with pytest.raises(MethodError, match="^Invalid arguments: argument --eval_strategy"):
            parse_checked_args(flags)
        return
    if expected is None:
        with pytest.raises(MethodError, match=r"^Invalid arguments: --load_best_model_at_end requires .* but found"):
            parse_checked_args(flags)
        return
    *_, args = parse_checked_args(flags)
    steps = (args.eval_steps, args.save_steps)
    assert (
        args.eval_strategy.value,
        steps[0],
        args.save_strategy.value,
        steps[1],
        args.load_best_model_at_end,
    ) == expected


def test_method_default_learning_rate_unless_given():
    assert parse_args([], method="prompt")[3].learning_rate == 3e-2
    assert parse_args(["--learning_rate", "1e-4"], method="prompt")[3].learning_rate == 1e-4
    assert parse_args([], method="lora+bitfit")[3].learning_rate == 2e-3  # the lowest of its members' (LoRA's)


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=[c.stem for c in ACCELERATE_CONFIGS])
def test_accelerate_configs_load_with_accelerates_own_loader(config):
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(config))
    assert config.read_text().startswith("#"), "each config says when to use it"
    expected = {
        "cpu": ("NO", 1), "cpu_ddp": ("MULTI_GPU", 2), "single_gpu": ("NO", 1), "multi_gpu": ("MULTI_GPU", 8),
        "fsdp": ("FSDP", 8), "deepspeed_zero2": ("DEEPSPEED", 8), "deepspeed_zero3": ("DEEPSPEED", 8),
        "multi_node": ("MULTI_GPU", 16),
    }[config.stem]  # fmt: skip
    assert (str(loaded.distributed_type).split(".")[-1], loaded.num_processes) == expected
    assert loaded.machine_rank == 0 and loaded.num_machines == (2 if config.stem == "multi_node" else 1)
    precision = "no" if config.stem.startswith("cpu") else "bf16"  # the GPU configs train in bf16 autocast
    assert str(loaded.mixed_precision).split(".")[-1].lower() == precision
    assert bool(loaded.use_cpu) == config.stem.startswith("cpu")
    if config.stem == "fsdp":  # FULL_SHARD, one FSDP unit per transformer layer, the state dict peft's guide uses
        fsdp = loaded.fsdp_config
        assert (
            fsdp["fsdp_sharding_strategy"] == "FULL_SHARD" and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        )
        assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "BertLayer" and fsdp["fsdp_use_orig_params"] is False
        assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    if config.stem.startswith("deepspeed"):
        zero = loaded.deepspeed_config
        assert zero["zero_stage"] == int(config.stem[-1]) and zero["offload_optimizer_device"] == "none"
        assert zero.get("zero3_init_flag") is (config.stem == "deepspeed_zero3")
    if config.stem == "multi_node":  # the second machine must find the first one
        assert loaded.main_process_ip and loaded.main_process_port and loaded.rdzv_backend == "static"


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_recipe_trains_and_saves_on_a_tiny_model(recipe, tiny_model_dir, tiny_csv, tmp_path, monkeypatch):
    """Each recipe file run as `__main__` with its flags (in this process: `accelerate launch` and a fresh
    interpreter are tested on the real default in test_e2e.py, and the recipes differ only in their method)."""
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(tiny_model_dir), "--train_file", str(tiny_csv), "--output_dir", str(out),
            "--max_steps", "4", "--per_device_train_batch_size", "16", "--eval_strategy", "no",
            "--save_strategy", "no", "--load_best_model_at_end", "false", "--prompt_init_text", ""]  # fmt: skip
    monkeypatch.setattr(sys, "argv", [str(recipe), *argv])
    runpy.run_path(str(recipe), run_name="__main__")
    record = json.loads((out / "ft_plugin_config.json").read_text())
    assert record["method"] == recipe_method(recipe)
    assert record["labels"] == ["negative", "neutral", "positive"]
    for name in ("all_results.json", "eval_results.json", "test_results.json", "config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert "test_accuracy" in json.loads((out / "all_results.json").read_text())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_keeps_the_best_checkpoint_and_saves_the_model_it_tested(
    method, tiny_model_dir, tiny_csv, tmp_path
):
    """The recipe's defaults evaluate, checkpoint and load the best checkpoint back at the end (intrinsic prompt
    tuning crashed there: its checkpoints hold the projected prompt); the saved result must be the model that
    was tested."""
    import torch

    import ft_plugin
    from ft_plugin.recipe import build_trainer, train_and_save

    argv = ["--method", method, "--model_name_or_path", str(tiny_model_dir), "--train_file", str(tiny_csv),
            "--output_dir", str(tmp_path / "out"), "--max_steps", "4", "--per_device_train_batch_size", "16",
            "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
            "--prompt_init_text", ""]  # fmt: skip
    trainer = build_trainer(*parse_args(argv))
    metrics = train_and_save(trainer)
    assert "test_accuracy" in metrics and metrics["test_samples"] == len(trainer.ft_test_dataset) == 24
    card = (tmp_path / "out" / "README.md").read_text()  # what the card's training section says
    assert f"| max_seq_length | `{trainer.ft_max_seq_length}` |" in card  # the tiny model's 64 positions
    assert f"Training examples: {len(trainer.train_dataset)}" in card
    batch = trainer.data_collator([trainer.ft_test_dataset[i] for i in range(8)])
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    loaded = ft_plugin.load(tmp_path / "out")
    with torch.no_grad():
        tested = trainer.model.eval()(**inputs).logits
        torch.testing.assert_close(loaded(**inputs).logits, tested, rtol=1e-4, atol=1e-5)
        test = trainer.data_collator(list(trainer.ft_test_dataset))  # the reported loss is the saved model's
        labels = test.pop("labels")
        loss = torch.nn.functional.cross_entropy(loaded(**test).logits, labels).item()
    assert metrics["test_loss"] == pytest.approx(loss, rel=1e-4)  # (AdaLoRA's added its regulariser)


def prompt_saved_in(checkpoint: Path):
    """The prompt PEFT saved in a checkpoint (the prompt encoder's output at that step)."""
    from safetensors.torch import load_file

    return load_file(checkpoint / "adapter_model.safetensors")["prompt_embeddings"]


@pytest.mark.parametrize(
    "method_flags", [["--method", "p_tuning"], ["--method", "prefix", "--prefix_projection", "true"]]
)
def test_reparameterised_prompts_resume_and_load_the_best_checkpoint_exactly(
    method_flags, tiny_model_dir, tiny_csv, tmp_path
):
    """PEFT checkpoints of p-tuning and projected prefixes hold the prompt encoder's output, which PEFT loads back
    into its embedding: p-tuning ran its MLP twice on resume and load-best (a silently different prompt), a
    projected prefix crashed on the shapes. Resumed and load-best prompts must be the ones trained."""
    import torch

    from ft_plugin.recipe import build_trainer

    def trainer_in(folder: Path, *extra: str):
        argv = [*method_flags, "--model_name_or_path", str(tiny_model_dir), "--train_file", str(tiny_csv),
                "--output_dir", str(folder), "--max_steps", "4", "--per_device_train_batch_size", "16",
                "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
                "--learning_rate", "5e-2", *extra]  # fmt: skip
        return build_trainer(*parse_args(argv))

    whole = trainer_in(tmp_path / "whole", "--load_best_model_at_end", "false", "--save_total_limit", "2")
    whole.train()
    resumed = trainer_in(tmp_path / "resumed", "--load_best_model_at_end", "false")
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"))
    adapter = resumed.model.active_adapter
    trained = whole.model.get_prompt_embedding_to_save(adapter)
    torch.testing.assert_close(trained, prompt_saved_in(tmp_path / "whole" / "checkpoint-4"))
    torch.testing.assert_close(resumed.model.get_prompt_embedding_to_save(adapter), trained)

    best = trainer_in(tmp_path / "best", "--metric_for_best_model", "loss")
    best.train()
    assert best.state.best_model_checkpoint is not None
    torch.testing.assert_close(
        best.model.get_prompt_embedding_to_save(adapter), prompt_saved_in(Path(best.state.best_model_checkpoint))
    )
