"""Multi-process training on the CPU, pre-flight checks, and the training flags that scale-out runs rely on.

`accelerate launch --config_file accelerate_configs/cpu_ddp.yaml` and `torchrun --nproc_per_node 2` run 2 processes
(DDP over gloo) on the tiny model. With the same global batch and seed they must reach the 1-process results:
eval/test accuracy and macro-F1 equal, losses within LOSS_TOLERANCE (float reduction order), predictions of the
saved adapters within PROBABILITY_TOLERANCE. Only the main process writes the result folder and prints metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from ft_plugin import distributed
from ft_plugin.allocator import mimalloc_available
from ft_plugin.distributed import LaunchError, check_accelerate_config, check_batches, check_launch
from ft_plugin.recipe import main

from .conftest import accelerate_launch, make_texts

ROOT = Path(__file__).resolve().parents[1]
RERUNS_ON_MIMALLOC = mimalloc_available()  # ft_plugin/allocator.py
LOSS_TOLERANCE = 1e-4
PROBABILITY_TOLERANCE = 1e-5
COMPARED = ("eval_accuracy", "eval_f1_macro", "eval_loss", "test_accuracy", "test_f1_macro", "test_loss", "train_loss")
# Every process records the files it opens for writing under FT_WATCH_DIR (one log per rank, outside that folder).
WRITE_HOOK = """
import builtins, io, os
_watch, _log, _open = os.environ["FT_WATCH_DIR"], os.environ["FT_WRITE_LOG"], builtins.open
_rank = os.environ.get("RANK", "0")
with _open(f"{_log}.{_rank}", "a") as handle:
    handle.write("started\\n")
def _recording_open(file, mode="r", *args, **kwargs):
    if any(flag in mode for flag in "wax+") and os.path.abspath(str(file)).startswith(_watch):
        with _open(f"{_log}.{_rank}", "a") as handle:
            handle.write(os.path.relpath(os.path.abspath(str(file)), _watch) + "\\n")
    return _open(file, mode, *args, **kwargs)
builtins.open = io.open = _recording_open  # pathlib writes through io.open
"""


def recipe_args(model_dir: Path, csv: Path, output_dir: Path, per_device: int, accumulation: int = 1) -> list[str]:
    """10 optimizer steps of `per_device x accumulation x processes` examples; deterministic (no dropout)."""
    return [
        "--model_name_or_path", str(model_dir), "--train_file", str(csv), "--output_dir", str(output_dir),
        "--max_steps", "10", "--per_device_train_batch_size", str(per_device),
        "--gradient_accumulation_steps", str(accumulation), "--learning_rate", "5e-3", "--seed", "7",
        "--lora_dropout", "0", "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
        # the same example order whatever the per-device batch (group_by_length depends on it)
        "--train_sampling_strategy", "random",
        # 24 validation/test rows split evenly: with a ragged last batch the Trainer's eval_loss counts the
        # samples accelerate repeats to even out the processes (accuracy and F1 drop them, the loss does not)
        "--per_device_eval_batch_size", "4",
    ]  # fmt: skip


def run(command: list[str], tmp_path: Path, watch: Path | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "FT_PLUGIN_ALLOCATOR"}  # as users run it
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    if watch is not None:
        hook = tmp_path / "hook"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(WRITE_HOOK)
        env.update(
            PYTHONPATH=f"{hook}{os.pathsep}{ROOT}", FT_WATCH_DIR=str(watch), FT_WRITE_LOG=str(tmp_path / "writes")
        )
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def results(folder: Path) -> dict[str, float]:
    return json.loads((folder / "all_results.json").read_text())


def probabilities(folder: Path):
    from ft_plugin.inference import TextClassifier

    return TextClassifier.from_pretrained(folder).predict_proba([text for text, _ in make_texts(30, seed=5)])


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tiny_csv, tmp_path_factory) -> Path:
    """The reference: 1 process, batch 16."""
    tmp = tmp_path_factory.mktemp("one-process")
    out = tmp / "out"
    run([sys.executable, "recipes/lora_bert.py", *recipe_args(tiny_model_dir, tiny_csv, out, per_device=16)], tmp)
    return out


def assert_same_as_one_process(out: Path, reference: Path, result: subprocess.CompletedProcess, tmp_path: Path):
    writes = {rank: (tmp_path / f"writes.{rank}").read_text().split() for rank in ("0", "1")}
    assert writes["0"][0] == writes["1"][0] == "started", "two processes ran"
    # each process started twice where it re-ran itself on mimalloc (ft_plugin/allocator.py); rank 1 wrote nothing
    assert writes["1"] == ["started"] * (2 if RERUNS_ON_MIMALLOC else 1), f"rank 1 wrote {writes['1']}"
    written = {Path(path).name for path in writes["0"]}  # the result is staged in .saving-*/ and renamed in
    assert {"ft_plugin_config.json", "all_results.json", "adapter_config.json"} <= written
    assert result.stdout.count("***** eval metrics *****") == 1, "only the main process logs results"
    assert "2 processes train with DDP over gloo" in result.stderr
    got, expected = results(out), results(reference)
    for key in COMPARED:
        assert got[key] == pytest.approx(expected[key], abs=LOSS_TOLERANCE), key
    assert (probabilities(out) - probabilities(reference)).abs().max() < PROBABILITY_TOLERANCE


def test_accelerate_launch_cpu_ddp_matches_one_process(one_process, tiny_model_dir, tiny_csv, tmp_path):
    out = tmp_path / "out"
    launcher = accelerate_launch("cpu_ddp")
    args = recipe_args(tiny_model_dir, tiny_csv, out, per_device=8)
    args += ["--max_train_samples", "100000"]  # more than the data: a warning, and the same data as the reference
    result = run([*launcher, "recipes/lora_bert.py", *args], tmp_path, watch=out)
    assert_same_as_one_process(out, one_process, result, tmp_path)
    assert result.stderr.count("--max_train_samples 100000 exceeds the") == 1, "data warnings: the main process only"


def test_torchrun_with_gradient_accumulation_matches_one_process(one_process, tiny_model_dir, tiny_csv, tmp_path):
    out = tmp_path / "out"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = recipe_args(tiny_model_dir, tiny_csv, out, per_device=4, accumulation=2)  # 2 x 4 x 2 = 16
    result = run([*launcher, "recipes/lora_bert.py", *args], tmp_path, watch=out)
    assert_same_as_one_process(out, one_process, result, tmp_path)


# Every recipe under 2 processes in one `accelerate launch` (a launch per recipe pays the stack's imports and the
# process group's start each time, ~45 s here: 2 cores cannot afford 13): the driver runs each recipe file as
# `__main__`, as the launcher does, one after the other in the same 2 processes, each into its own output folder.
RECIPE_DRIVER = """
import runpy, sys
from pathlib import Path
out, recipes, args = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3:]
for recipe in recipes:
    sys.argv = [recipe, *args, "--output_dir", str(out / Path(recipe).stem)]  # the last --output_dir wins
    runpy.run_path(recipe, run_name="__main__")
"""


def test_every_recipe_runs_under_two_processes(tiny_model_dir, tiny_csv, tmp_path):
    from .test_recipes import RECIPES, recipe_method

    out = tmp_path / "out"
    driver = tmp_path / "run_recipes.py"
    driver.write_text(RECIPE_DRIVER)
    args = recipe_args(tiny_model_dir, tiny_csv, out, per_device=8)
    args[args.index("--max_steps") + 1] = "3"
    args[args.index("--save_strategy") + 1] = "steps"  # a checkpoint at the last step, with each method's state
    recipes = ",".join(str(recipe.relative_to(ROOT)) for recipe in RECIPES)
    result = run(
        [*accelerate_launch("cpu_ddp"), str(driver), str(out), recipes, *args, "--save_steps", "3",
         "--prompt_init_text", ""], tmp_path, out,
    )  # fmt: skip
    writes = {rank: (tmp_path / f"writes.{rank}").read_text().split() for rank in ("0", "1")}
    assert writes["0"][0] == writes["1"][0] == "started", "two processes ran"
    assert writes["1"] == ["started"], f"rank 1 wrote {writes['1'][1:]}"  # (a runpy driver: not re-run on mimalloc)
    for recipe, state in (("adalora_bert", "adalora_state.pt"), ("p_tuning_bert", "prompt_encoder_state.safetensors")):
        assert (out / recipe / "checkpoint-3" / state).is_file()
    assert result.stdout.count("***** eval metrics *****") == len(RECIPES), "only the main process logs results"
    for recipe in RECIPES:
        assert json.loads((out / recipe.stem / "ft_plugin_config.json").read_text())["method"] == recipe_method(recipe)
        assert probabilities(out / recipe.stem).shape == (30, 3), recipe.stem


def test_a_user_error_under_two_processes_is_printed_once(tiny_model_dir, tiny_csv, tmp_path):
    """Every process fails alike before training: the main process says so, the other exits quietly (the launcher
    then reports both exit statuses, as it does for any failed script)."""
    args = [*recipe_args(tiny_model_dir, tiny_csv, tmp_path / "out", per_device=8), "--lora_r", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [*accelerate_launch("cpu_ddp"), "recipes/lora_bert.py", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert result.returncode != 0
    assert result.stderr.count("ft-plugin: error:") == 1, result.stderr[-3000:]
    assert "ft-plugin: error: --lora_r must be a positive rank, got 0 (try 8)." in result.stderr
    assert "exitcode  : 2" in result.stderr  # both processes exited with ft-plugin's status for user errors


def trained_lora_b(out: Path) -> float:
    """LoRA B starts at zero, so a non-zero B in the saved adapter means gradients reached it."""
    weights = load_file(out / "adapter_model.safetensors")
    return max(tensor.abs().max().item() for name, tensor in weights.items() if "lora_B" in name)


@pytest.mark.parametrize(
    "flags",
    [
        ["--gradient_accumulation_steps", "2"],
        ["--gradient_checkpointing", "true"],
        ["--bf16", "true", "--use_cpu", "true"],  # bf16 autocast on the CPU needs --use_cpu (transformers' rule)
    ],
    ids=["gradient_accumulation", "gradient_checkpointing", "bf16"],
)
def test_training_flag_trains_and_saves(flags, tiny_model_dir, tiny_csv, tmp_path):
    out = tmp_path / "out"
    args = recipe_args(tiny_model_dir, tiny_csv, out, per_device=8)
    args[args.index("--max_steps") + 1] = "3"
    metrics = main([*args, *flags], method="lora")
    assert metrics["train_loss"] == pytest.approx(metrics["train_loss"])  # not NaN
    assert trained_lora_b(out) > 0
    assert probabilities(out).shape == (30, 3)


# ---- pre-flight checks: one line naming the fix ----


@pytest.fixture()
def no_gpu(monkeypatch):
    monkeypatch.setattr(distributed, "accelerator_count", lambda: 0)


@pytest.mark.parametrize(
    "environ, reason",
    [
        ({"ACCELERATE_MIXED_PRECISION": "bf16", "WORLD_SIZE": "8"}, "mixed_precision bf16"),  # multi_gpu.yaml
        ({"ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_USE_CPU": "False"}, "mixed_precision bf16"),  # single_gpu
        ({"ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_USE_FSDP": "true", "WORLD_SIZE": "8"}, "FSDP"),
    ],
)
def test_gpu_config_on_a_machine_without_gpus_is_one_line(no_gpu, environ, reason):
    with pytest.raises(LaunchError) as error:
        check_launch([], environ)
    message = str(error.value)
    assert "\n" not in message and reason in message and "cpu_ddp.yaml" in message


def test_torchrun_without_gpus_trains_on_the_cpu_over_gloo(no_gpu):
    environ = {"WORLD_SIZE": "2", "LOCAL_RANK": "0"}  # what torchrun sets
    check_launch([], environ)
    assert environ["ACCELERATE_USE_CPU"] == "true"
    single = {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "False"}  # `accelerate launch` without config
    check_launch([], single)
    assert single["ACCELERATE_USE_CPU"] == "False"


@pytest.mark.parametrize(
    "argv, environ", [(["--deepspeed", "ds.json"], {}), ([], {"ACCELERATE_USE_DEEPSPEED": "true"})]
)
def test_deepspeed_without_deepspeed_is_one_line(monkeypatch, argv, environ):
    monkeypatch.setattr(distributed, "is_installed", lambda package: package != "deepspeed")
    with pytest.raises(LaunchError, match=r"pip install 'ft-plugin\[deepspeed\]'"):
        check_launch(argv, environ)


def test_more_processes_than_batches_is_one_line():
    check_batches(train_size=17, per_device_batch_size=8, world_size=3)  # 3 batches: one each
    with pytest.raises(LaunchError) as error:
        check_batches(train_size=16, per_device_batch_size=8, world_size=3)
    assert "2 batch(es) of 8, fewer than the 3 processes" in str(error.value)
    assert "--per_device_train_batch_size to 5" in str(error.value)


CONFIGS = sorted((ROOT / "accelerate_configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_shipped_configs_are_checked_against_the_machine(monkeypatch, config):
    monkeypatch.setattr(distributed, "is_installed", lambda package: True)
    uses_gpus = not config.stem.startswith("cpu")
    if uses_gpus:
        with pytest.raises(LaunchError, match="asks for GPUs.*cpu_ddp.yaml"):
            check_accelerate_config(str(config), gpus=0)
        assert "fits this machine" in check_accelerate_config(str(config), gpus=8)
    else:
        assert "fits this machine" in check_accelerate_config(str(config), gpus=0)
    if config.stem == "multi_gpu":
        with pytest.raises(LaunchError, match="add --num_processes 2"):
            check_accelerate_config(str(config), gpus=2)
    monkeypatch.setattr(distributed, "is_installed", lambda package: package != "deepspeed")
    if config.stem.startswith("deepspeed"):
        with pytest.raises(LaunchError, match=r"ft-plugin\[deepspeed\]"):
            check_accelerate_config(str(config), gpus=8)


def test_gpu_config_stops_the_recipe_before_loading_anything(
    no_gpu, monkeypatch, capsys, tiny_model_dir, tiny_csv, tmp_path
):
    # what `accelerate launch --config_file accelerate_configs/single_gpu.yaml` sets for the recipe process
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")
    with pytest.raises(SystemExit) as exit_:
        main(recipe_args(tiny_model_dir, tiny_csv, tmp_path / "out", per_device=8), method="lora")
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("ft-plugin: error: The Accelerate config asks for GPUs (mixed_precision bf16")
    assert not (tmp_path / "out").exists()


def test_load_in_4bit_without_bitsandbytes_is_one_line(monkeypatch, capsys, tiny_model_dir, tiny_csv, tmp_path):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a)
    )
    args = recipe_args(tiny_model_dir, tiny_csv, tmp_path / "out", per_device=8)
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--load_in_4bit", "true"], method="lora")
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("ft-plugin: error: --load_in_4bit needs bitsandbytes") and "ft-plugin[qlora]" in error


def test_class_weighted_loss_under_two_processes_with_accumulation_matches_one_process(
    one_process, tiny_model_dir, tiny_csv, tmp_path
):
    """`--class_weights`' loss divides by the examples of the whole step (both processes, both micro-batches)."""
    weights = ["--class_weights", "positive=3,negative=0.5"]
    reference = tmp_path / "one"
    run([sys.executable, "recipes/lora_bert.py", *recipe_args(tiny_model_dir, tiny_csv, reference, 16), *weights],
        tmp_path)  # fmt: skip
    out = tmp_path / "out"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = recipe_args(tiny_model_dir, tiny_csv, out, per_device=4, accumulation=2)
    result = run([*launcher, "recipes/lora_bert.py", *args, *weights], tmp_path, watch=out)
    assert_same_as_one_process(out, reference, result, tmp_path)
    assert results(out)["train_loss"] != pytest.approx(results(one_process)["train_loss"], abs=1e-3)  # it weighs
