"""Crashes and resume: `kill -9` between checkpoints, then `--resume_from_checkpoint` or a plain re-run, ends with the
same metrics as an uninterrupted run; a crash while saving never leaves a folder that loads.

The checkpoint lies in the middle of epoch 1 (1 process, 12 steps an epoch) or epoch 2 (2 processes, 6 steps an
epoch), where the shuffle must be replayed from (seed, epoch): see ft_plugin/trainer.py. Tolerance 1e-6 (the runs
are bitwise equal on CPU; before the fix the 2-process run trained steps 11-12 on the wrong batches).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ft_plugin.errors import ModelError

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-6

# The recipe's own main(), plus a callback that prints each step and sleeps a little, and at FT_TEST_WAIT_AT waits
# for the test's signal, so that a busy machine cannot let the run finish before the test reads that step (the
# sleep changes no random state, so every run below uses this same driver).
DRIVER = """
import os, sys, time
from transformers import TrainerCallback
import ft_plugin.recipe as recipe

WAIT_AT = int(os.environ.get("FT_TEST_WAIT_AT", "0"))

class Pace(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        print(f"ft-test step {state.global_step}", flush=True)
        time.sleep(60 if state.global_step == WAIT_AT else 0.05)

build_trainer = recipe.build_trainer
recipe.build_trainer = lambda *a, **k: build_trainer(*a, callbacks=[Pace()], **k)
recipe.main(method="lora")
"""
MAX_STEPS, SAVE_STEPS, KILL_AT = 30, 15, 20


def _command(driver: Path, model: Path, csv: Path, out: Path, *extra: str, launcher: tuple = ()) -> list[str]:
    return [
        *(launcher or [sys.executable]), str(driver), "--model_name_or_path", str(model), "--train_file", str(csv),
        "--output_dir", str(out), "--max_steps", str(MAX_STEPS), "--save_steps", str(SAVE_STEPS),
        "--save_strategy", "steps", "--save_total_limit", "2", "--eval_strategy", "no",
        "--load_best_model_at_end", "false", "--per_device_train_batch_size", "16", "--seed", "7", *extra,
    ]  # fmt: skip


def _env(wait_at: int = 0) -> dict[str, str]:
    """The driver's environment; `wait_at`: the step at which it waits for the test's signal."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "FT_TEST_WAIT_AT": str(wait_at)}


def _run(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _kill_at(command: list[str], step: int) -> None:
    """Start training and SIGKILL it as soon as it reports `step`."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=_env(wait_at=step),
        start_new_session=True,  # its own process group: the launcher and all its workers die together
    )  # fmt: skip
    try:
        for line in process.stdout:
            if f"ft-test step {step}" in line:  # two ranks may print on one line
                os.killpg(process.pid, signal.SIGKILL)
                break
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before the kill"


def _metrics(out: Path) -> dict[str, float]:
    results = json.loads((out / "all_results.json").read_text())
    return {
        k: v
        for k, v in results.items()
        if k.startswith(("eval_", "test_")) and "_per_second" not in k and "runtime" not in k
    }


def _assert_same(resumed: dict[str, float], reference: dict[str, float], tolerance: float) -> None:
    assert resumed.keys() == reference.keys()
    for key, value in reference.items():
        assert abs(resumed[key] - value) <= tolerance, (key, resumed[key], value)


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("driver") / "paced_lora.py"
    path.write_text(DRIVER)
    return path


def _launcher(processes: int) -> tuple:
    """`python` for one process; `accelerate launch` with the 2-process CPU DDP config (on a free port) for two."""
    if processes == 1:
        return ()
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = ROOT / "accelerate_configs" / "cpu_ddp.yaml"
    return (sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--main_process_port", str(port))  # fmt: skip


@pytest.mark.parametrize("processes", [1, 2], ids=["1-process", "2-process-ddp"])
def test_kill_9_then_resume_or_rerun_matches_an_uninterrupted_run(
    processes, driver, tiny_model_dir, tiny_csv, tmp_path
):
    from ft_plugin.saving import has_result

    launcher = _launcher(processes)

    reference_out, killed = tmp_path / "reference", tmp_path / "killed"
    _run(_command(driver, tiny_model_dir, tiny_csv, reference_out, launcher=launcher))
    reference = _metrics(reference_out)

    _kill_at(_command(driver, tiny_model_dir, tiny_csv, killed, launcher=launcher), KILL_AT)
    assert (killed / f"checkpoint-{SAVE_STEPS}" / "trainer_state.json").is_file()
    assert not (killed / f"checkpoint-{2 * SAVE_STEPS}").exists() and not has_result(killed)
    rerun = tmp_path / "rerun"
    shutil.copytree(killed, rerun)

    # 1. explicit --resume_from_checkpoint
    checkpoint = killed / f"checkpoint-{SAVE_STEPS}"
    resumed = _run(
        _command(
            driver, tiny_model_dir, tiny_csv, killed, "--resume_from_checkpoint", str(checkpoint), launcher=launcher
        )
    )
    steps = [int(step) for step in re.findall(r"ft-test step (\d+)", resumed.stdout)]  # ranks' lines may interleave
    assert steps and steps[0] == SAVE_STEPS + 1, "training restarted instead of resuming"
    _assert_same(_metrics(killed), reference, TOLERANCE)

    # 2. the same command again: the last checkpoint is found and announced
    again = _run(_command(driver, tiny_model_dir, tiny_csv, rerun, launcher=launcher))
    assert f"Checkpoint detected, resuming training at {rerun / f'checkpoint-{SAVE_STEPS}'}" in again.stderr
    _assert_same(_metrics(rerun), reference, TOLERANCE)


def test_a_checkpoint_killed_while_being_written_is_skipped(tmp_path):
    from ft_plugin.recipe import last_checkpoint

    for step, complete in ((10, True), (20, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert last_checkpoint(tmp_path / "missing") is None


@pytest.fixture()
def lora_model(tiny_model_dir):
    from ft_plugin.methods import apply_method
    from ft_plugin.models import load_base_model

    base, tokenizer = load_base_model(str(tiny_model_dir), ["a", "b", "c"])
    return apply_method(base, "lora"), tokenizer


def first_weight(model):
    return next(p for name, p in model.named_parameters() if "lora_A" in name).detach().clone()


class Killed(BaseException):
    """The process dying mid-way: no `except OSError` (nor `except Exception`) runs."""


@pytest.mark.parametrize("failing_file", ["adapter_model.safetensors", "tokenizer.json"])
@pytest.mark.parametrize("failure", ["error", "kill"])
def test_a_crash_while_saving_never_leaves_a_folder_that_loads_nor_loses_the_previous_result(
    lora_model, tmp_path, monkeypatch, failing_file, failure
):
    import torch

    from ft_plugin import saving

    model, tokenizer = lora_model
    out = tmp_path / "result"
    saving.save_result(model, out, tokenizer)
    first = first_weight(saving.load(out))  # the first result loads
    with torch.no_grad():
        next(p for name, p in model.named_parameters() if "lora_A" in name).add_(1.0)  # a different second result

    real_replace, crashed = os.replace, []

    def crash_on(source, target):  # the save fails (or the process dies) when this file would first land
        if Path(target).name == failing_file and Path(source).parent.name.startswith(".saving-") and not crashed:
            crashed.append(target)
            raise OSError(28, "No space left on device") if failure == "error" else Killed()
        real_replace(source, target)

    monkeypatch.setattr(saving.os, "replace", crash_on)
    if failure == "error":
        with pytest.raises(ModelError, match="No space left on device.*previous result there is back in place"):
            saving.save_result(model, out, tokenizer)
        monkeypatch.undo()
        torch.testing.assert_close(first_weight(saving.load(out)), first)  # rolled back to the first result
    else:
        with pytest.raises(Killed):
            saving.save_result(model, out, tokenizer)
        monkeypatch.undo()
        with pytest.raises(ModelError, match=r"interrupted; the previous result is kept in '.*\.previous-result'"):
            saving.load(out)  # neither the old result nor a half-new one ...
        torch.testing.assert_close(first_weight(saving.load(out / ".previous-result")), first)  # ... but kept
        assert saving.has_result(out)  # so a new run still needs --overwrite_output_dir
    assert not list(out.glob(".saving-*")), "the staging folder is cleaned up"
    saving.save_result(model, out, tokenizer)  # saving again completes, and drops the previous result
    assert not (out / ".previous-result").exists()
    assert not torch.equal(first_weight(saving.load(out)), first)


KILLED_WHILE_SAVING = """
import os, signal, sys, torch
from pathlib import Path
from ft_plugin import saving
from ft_plugin.methods import apply_method
from ft_plugin.models import load_base_model

model_dir, out, failing_file = sys.argv[1:]
base, tokenizer = load_base_model(model_dir, ["a", "b", "c"])
model = apply_method(base, "lora")
saving.save_result(model, out, tokenizer)
with torch.no_grad():
    next(p for name, p in model.named_parameters() if "lora_A" in name).add_(1.0)
real_replace = os.replace
def die_on(source, target):  # SIGKILL as the file would land: no finally, no cleanup runs
    if Path(target).name == failing_file and Path(source).parent.name.startswith(".saving-"):
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(source, target)
os.replace = die_on
saving.save_result(model, out, tokenizer)
"""


@pytest.mark.parametrize("failing_file", ["adapter_model.safetensors", "tokenizer.json"])
def test_a_real_kill_while_saving_leaves_the_previous_result_and_a_folder_that_does_not_load(
    tiny_model_dir, lora_model, tmp_path, failing_file
):
    """The in-process stand-in above still runs `finally` blocks; SIGKILL runs nothing: the staging folder stays."""
    from ft_plugin import saving

    driver, out = tmp_path / "save_and_die.py", tmp_path / "result"
    driver.write_text(KILLED_WHILE_SAVING)
    command = [sys.executable, str(driver), str(tiny_model_dir), str(out), failing_file]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert list(out.glob(".saving-*")), "killed before its cleanup"
    with pytest.raises(ModelError, match=r"interrupted; the previous result is kept in '.*\.previous-result'"):
        saving.load(out)
    saving.load(out / ".previous-result")  # the first result, whole
    assert saving.has_result(out)  # a new run still needs --overwrite_output_dir
    model, tokenizer = lora_model
    saving.save_result(model, out, tokenizer)  # saving again completes and clears what the kill left
    assert not (out / ".previous-result").exists() and not list(out.glob(".saving-*"))
    saving.load(out)


def test_the_length_grouped_shuffle_is_a_function_of_seed_and_epoch_even_under_a_skip():
    """What resuming relies on: epoch k's order comes from seed + k, and `set_epoch` reaches the sampler through
    accelerate's SkipBatchSampler -> BatchSamplerShard chain of a resumed multi-process run."""
    import torch
    from accelerate.data_loader import BatchSamplerShard, SkipBatchSampler
    from torch.utils.data import BatchSampler
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from ft_plugin.trainer import EpochSeededLengthGroupedSampler, ResumeEpochCallback

    lengths = [int(n) for n in torch.randint(4, 64, (96,), generator=torch.Generator().manual_seed(0))]

    def loader(skip: int):
        sampler = EpochSeededLengthGroupedSampler(LengthGroupedSampler(16, lengths=lengths), seed=7)
        shard = BatchSamplerShard(BatchSampler(sampler, 8, drop_last=False), num_processes=2, process_index=0)
        batches = SkipBatchSampler(shard, skip_batches=skip) if skip else shard
        return type("Loader", (), {"batch_sampler": batches})(), sampler

    torch.manual_seed(1)  # the global RNG plays no part
    fresh, sampler = loader(0)
    sampler.set_epoch(2)
    epoch_2 = list(fresh.batch_sampler)
    torch.manual_seed(2)
    resumed, _ = loader(3)
    state = type("State", (), {"epoch": 2.5})()
    ResumeEpochCallback().on_epoch_begin(None, state, None, train_dataloader=resumed)
    assert list(resumed.batch_sampler) == epoch_2[3:]
    sampler.set_epoch(3)
    assert list(fresh.batch_sampler) != epoch_2


def test_ctrl_c_prints_one_line_naming_the_checkpoint_to_resume_from(driver, tiny_model_dir, tiny_csv, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen(
        _command(driver, tiny_model_dir, tiny_csv, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT, env=_env(wait_at=KILL_AT),
        # Ctrl-C's default action, even where pytest itself ignores SIGINT (started with `&` by a script or nohup)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    for line in process.stdout:
        if f"ft-test step {KILL_AT}" in line:  # after checkpoint-15
            process.send_signal(signal.SIGINT)
            break
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    expected = (
        f"ft-plugin: interrupted. The last checkpoint is '{out / f'checkpoint-{SAVE_STEPS}'}': run the same command"
    )
    assert [line for line in stderr.splitlines() if line.startswith("ft-plugin:")] == [f"{expected} to resume from it."]


def test_resume_mistakes_are_one_line_errors_naming_the_fix(tiny_model_dir, tiny_csv, tmp_path):
    """After Ctrl-C of an --overwrite_output_dir run, the advice works (it said to drop the flag, which a result
    still in the folder then refused); `--resume_from_checkpoint true` without a checkpoint and a checkpoint of
    another method fail in one line before training (they were tracebacks from the Trainer)."""
    from ft_plugin.errors import FtPluginError
    from ft_plugin.recipe import build_trainer, check_output_dir, interrupted_state, parse_args, train_and_save

    common = ["--model_name_or_path", str(tiny_model_dir), "--train_file", str(tiny_csv), "--max_steps", "2",
              "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no"]  # fmt: skip
    lora = [*common, "--output_dir", str(tmp_path / "lora"), "--method", "lora"]
    train_and_save(build_trainer(*parse_args(lora)))
    checkpoint = tmp_path / "lora" / "checkpoint-2"
    assert interrupted_state([*lora, "--overwrite_output_dir"]) == (
        f"The last checkpoint is '{checkpoint}': run the same command with --resume_from_checkpoint {checkpoint}."
    )

    nothing = parse_args([*common, "--output_dir", str(tmp_path / "empty"), "--resume_from_checkpoint", "true"])
    with pytest.raises(FtPluginError, match="--resume_from_checkpoint true found no checkpoint in '.*empty'"):
        check_output_dir(nothing[3])

    bitfit = parse_args([*common, "--output_dir", str(tmp_path / "bitfit"), "--method", "bitfit"])
    with pytest.raises(FtPluginError, match=rf"^Could not resume from '{checkpoint}' \(.*\): it was saved by another"):
        train_and_save(build_trainer(*bitfit), str(checkpoint))


@pytest.mark.parametrize(
    "error",
    [  # what a full disk raised while each library wrote a file (a 2 MiB tmpfs)
        OSError(28, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),  # torch.save
        "safetensors",
    ],
    ids=["python", "torch.save", "safetensors"],
)
def test_a_full_disk_while_checkpointing_is_one_line_and_the_same_command_then_trains(
    error, tiny_model_dir, tiny_csv, tmp_path, monkeypatch, capsys
):
    import torch
    from safetensors import SafetensorError

    from ft_plugin.recipe import main
    from ft_plugin.saving import has_result

    if error == "safetensors":
        error = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    argv = ["--model_name_or_path", str(tiny_model_dir), "--train_file", str(tiny_csv), "--max_steps", "4",
            "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no", "--method", "lora",
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    real_save = torch.save

    def full_disk(obj, path, *args, **kwargs):  # the first checkpoint's optimizer state does not fit
        if "checkpoint-" in str(path):
            raise error
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]  # under progress bars
    assert message.startswith(f"ft-plugin: error: Could not write a checkpoint in '{tmp_path / 'out'}' (")
    assert message.endswith(  # the first checkpoint failed; a later one would be named, as after Ctrl-C
        "or not writable. Free some space (or keep fewer checkpoints: --save_total_limit 1). No checkpoint was saved "
        f"in '{tmp_path / 'out'}' yet: run the same command to start again."
    )
    assert not has_result(tmp_path / "out")
    monkeypatch.undo()  # space freed: the same command trains (the partial checkpoint is not resumed from)
    assert main(argv)["train_loss"] > 0 and has_result(tmp_path / "out")
