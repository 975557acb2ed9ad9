"""Sweeps (Optuna via Trainer.hyperparameter_search) and `--method auto` on the tiny model."""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import pytest

from ft_plugin.auto import _without_method, requested_method, rung_steps
from ft_plugin.cli import main
from ft_plugin.recipe import main as recipe_main
from ft_plugin.search import pareto_front

from .conftest import accelerate_launch

ROOT = Path(__file__).resolve().parents[1]


def sweep_argv(tiny_model_dir, tiny_csv, out, *extra: str) -> list[str]:
    return [
        "sweep", "--methods", "lora,bitfit,adapter", "--model_name_or_path", str(tiny_model_dir),
        "--train_file", str(tiny_csv), "--num_train_epochs", "2", "--evals_per_epoch", "2",
        "--output_dir", str(out), *extra,
    ]  # fmt: skip


def test_three_trial_sweep_writes_leaderboard_plot_and_a_runnable_recipe_then_resumes(
    tiny_model_dir, tiny_csv, tmp_path
):
    import optuna

    out = tmp_path / "sweep"
    assert main(sweep_argv(tiny_model_dir, tiny_csv, out, "--n_trials", "3", "--class_weights", "balanced")) == 0
    rows = json.loads((out / "leaderboard.json").read_text())
    assert len(rows) == 3 and {row["method"] for row in rows} <= {"lora", "bitfit", "adapter"}
    for row in rows:
        assert row["trainable_params"] > 0 and row["train_seconds"] > 0 and 0 <= row["accuracy"] <= 1
    assert (out / "leaderboard.csv").read_text().startswith("trial,state,method,learning_rate")
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"

    best = next(row for row in rows if row["state"] == "COMPLETE")
    recipe = (out / "best_recipe.yaml").read_text()
    assert f"method: {best['method']}" in recipe and "accelerate launch" in recipe
    assert "class_weights: balanced" in recipe  # the sweep's own model flags carry over
    assert all(row["peak_memory_mb"] > 0 for row in rows)
    # The recipe runs as the file says, under `accelerate launch` with the shipped CPU config.
    done = subprocess.run(
        [*accelerate_launch("cpu"), "recipes/lora_bert.py", str(out / "best_recipe.yaml"), "--max_steps", "2", "--eval_strategy", "no",
         "--save_strategy", "no", "--load_best_model_at_end", "false", "--output_dir", str(tmp_path / "best")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "best" / "ft_plugin_config.json").read_text())
    assert record["method"] == best["method"]  # the file's method wins over the recipe's own
    assert set(record["hyperparameters"]["class_weights"]) == {"negative", "neutral", "positive"}

    # Resuming with a larger total continues the same study in the same SQLite file.
    assert main(sweep_argv(tiny_model_dir, tiny_csv, out, "--n_trials", "4")) == 0
    study = optuna.load_study(study_name="ft-plugin-sweep", storage=f"sqlite:///{out / 'sweep.db'}")
    assert [trial.number for trial in study.trials] == [0, 1, 2, 3]
    assert len(json.loads((out / "leaderboard.json").read_text())) == 4
    # ... with a trial of its own: the sampler's seed moves on (the same seed suggested trial 0 again)
    assert study.trials[3].params not in [trial.params for trial in study.trials[:3]]


def test_a_study_goes_on_only_with_its_own_methods(tiny_model_dir, tiny_csv, tmp_path, capsys):
    """Optuna fixes the method choices of a study: another set is a one-line error before any trial (it was an
    Optuna traceback from inside the first new trial), and a new --study_name in the same folder works."""
    argv = sweep_argv(tiny_model_dir, tiny_csv, tmp_path, "--n_trials", "1", "--num_train_epochs", "1")
    argv[argv.index("lora,bitfit,adapter")] = "lora,bitfit"
    assert main(argv) == 0
    capsys.readouterr()
    argv[argv.index("lora,bitfit")] = "lora,bitfit,ia3"
    argv[argv.index("--n_trials") + 1] = "2"
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "Study 'ft-plugin-sweep' in '" in error and "searches the methods lora,bitfit, not lora,bitfit,ia3" in error
    assert "Pass --methods lora,bitfit to go on with it, or a new --study_name" in error
    assert main([*argv, "--study_name", "with-ia3"]) == 0


def test_a_sweep_does_not_call_its_methods_options_ignored(tiny_model_dir, tiny_csv, tmp_path, caplog):
    """A sweep's flags are parsed once for all its methods: prefix's option is not 'ignored' for not being LoRA's."""
    import logging

    config = tmp_path / "sweep.yaml"
    config.write_text("num_virtual_tokens: 5\n")
    argv = sweep_argv(tiny_model_dir, tiny_csv, tmp_path / "out", "--n_trials", "1", "--num_train_epochs", "1")
    argv[argv.index("lora,bitfit,adapter")] = "lora,prefix"
    with caplog.at_level(logging.WARNING, logger="ft_plugin"):
        assert main([argv[0], str(config), *argv[1:]]) == 0
    assert "ignored" not in caplog.text


def test_a_study_goes_on_only_on_the_model_and_data_it_was_run_on(tiny_model_dir, tiny_csv, tmp_path, capsys):
    """A resume with another base model or data ranked trials of both together, and best_recipe.yaml did not
    reproduce its best trial; now a one-line error before any trial."""
    argv = sweep_argv(tiny_model_dir, tiny_csv, tmp_path, "--n_trials", "1", "--num_train_epochs", "1")
    assert main([*argv, "--max_train_samples", "120"]) == 0
    capsys.readouterr()
    argv[argv.index("--n_trials") + 1] = "2"
    assert main([*argv, "--max_train_samples", "60"]) == 2
    error = capsys.readouterr().err
    assert "Study 'ft-plugin-sweep' in '" in error and "was run with --max_train_samples 120, and its trials" in error
    assert main([*argv, "--max_train_samples", "120"]) == 0


@pytest.mark.parametrize(("cpu_dropout", "fast"), [("fast", True), ("torch", False)])
def test_sweep_trials_train_with_the_cpu_dropout_asked_for(
    tiny_model_dir, tiny_csv, tmp_path, attention_masks, cpu_dropout, fast
):
    argv = sweep_argv(tiny_model_dir, tiny_csv, tmp_path / "sweep", "--n_trials", "1", "--attention_dropout", "0.1")
    assert main([*argv, "--cpu_dropout", cpu_dropout]) == 0
    assert bool(attention_masks) == fast  # the trials' attention dropout took ft-plugin's masks only with `fast`


def test_peak_rss_is_the_peak_of_its_own_window():
    """Each trial's CPU memory is its own peak: `ru_maxrss` would carry an earlier trial's peak into later ones."""
    import torch

    from ft_plugin.memory import PeakRSS

    first = PeakRSS(interval=0.005).start()
    before = first.peak / 2**20
    big = torch.ones(50 * 2**20)  # 200 MB, written
    time.sleep(0.05)
    del big
    assert first.stop() > before + 150
    second = PeakRSS(interval=0.005).start()
    time.sleep(0.05)
    assert second.stop() < first.peak / 2**20 - 150  # freed (glibc unmaps large blocks), so not in this window


def test_zero_trials_is_a_user_error(tiny_model_dir, tiny_csv, tmp_path, capsys):
    assert main(sweep_argv(tiny_model_dir, tiny_csv, tmp_path, "--n_trials", "0")) == 2
    assert "--n_trials must be at least 1" in capsys.readouterr().err
    assert main(sweep_argv(tiny_model_dir, tiny_csv, tmp_path, "--n_trials", "1", "--timeout", "-1")) == 2
    assert "--timeout is in minutes and must be positive, got -1.0" in capsys.readouterr().err
    assert main(sweep_argv(tiny_model_dir, tiny_csv, tmp_path, "--n_trials", "1", "--evals_per_epoch", "0")) == 2
    assert "--evals_per_epoch must be at least 1, got 0." in capsys.readouterr().err


def test_empty_search_space_after_dropping_incompatible_methods(tiny_model_dir, tiny_csv, tmp_path, capsys):
    argv = sweep_argv(tiny_model_dir, tiny_csv, tmp_path, "--n_trials", "2", "--target_modules", "q_proj")
    argv[argv.index("lora,bitfit,adapter")] = "lora,ia3"
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "No method of --methods lora,ia3 can be applied" in error and "choose other methods" in error


def test_unknown_method_in_a_sweep_is_a_user_error(tiny_model_dir, tiny_csv, tmp_path, capsys):
    argv = sweep_argv(tiny_model_dir, tiny_csv, tmp_path, "--n_trials", "1")
    argv[argv.index("lora,bitfit,adapter")] = "lora,lorax"
    assert main(argv) == 2
    assert "Unknown method 'lorax'" in capsys.readouterr().err


def test_pareto_front_keeps_trials_nothing_beats_on_both_axes():
    rows = [
        {"state": "COMPLETE", "accuracy": 0.9, "trainable_params": 1000},
        {"state": "COMPLETE", "accuracy": 0.8, "trainable_params": 100},
        {"state": "COMPLETE", "accuracy": 0.7, "trainable_params": 500},  # beaten by the 0.8 / 100 trial
        {"state": "PRUNED", "accuracy": 0.95, "trainable_params": 10},  # pruned trials are not on the front
    ]
    assert [row["accuracy"] for row in pareto_front(rows)] == [0.8, 0.9]


def test_ctrl_c_during_the_auto_race_says_the_race_starts_again(tmp_path):
    from ft_plugin.recipe import interrupted_state

    message = interrupted_state(["--method", "auto", "--output_dir", str(tmp_path)])
    assert message == "The --method auto race was interrupted before it chose a method: the same command races again."


def test_requested_method_reads_the_flag_or_the_recipes_own():
    assert requested_method(["--method", "auto", "--lora_r", "4"], "lora") == "auto"
    assert requested_method(["--method=auto", "--lora_r", "4"], "lora") == "auto"
    assert requested_method(["--lora_r", "4"], "bitfit") == "bitfit"
    assert _without_method(["--method", "auto", "--seed", "1", "--method=lora"]) == ["--seed", "1"]


def test_race_rungs_count_down_from_the_horizon_and_eta_at_least_the_methods_makes_one_rung():
    assert rung_steps(126, 6, 1 / 3, 3) == [14, 42]  # six methods: the same two rungs as eight
    assert rung_steps(126, 5, 1 / 3, 3) == [14, 42]
    assert rung_steps(126, 10, 1 / 3, 3) == [5, 14, 42]
    assert rung_steps(126, 5, 1 / 3, 5) == rung_steps(126, 5, 1 / 3, 9) == [42]  # racing fast starters
    assert rung_steps(126, 1, 1 / 3, 3) == []


def test_the_default_auto_methods_are_registered_and_leave_out_the_fast_starters():
    """The default race (docs/selection.md): registered methods, without BitFit's biases or soft prompts, which
    lead early rungs and end behind."""
    from ft_plugin.auto import DEFAULT_AUTO_METHODS
    from ft_plugin.methods.registry import METHODS

    defaults = DEFAULT_AUTO_METHODS.split(",")
    assert len(defaults) == len(set(defaults)) == 8 and set(defaults) <= set(METHODS)
    assert not {"bitfit", "prompt", "p_tuning", "intrinsic_prompt"} & {part for m in defaults for part in m.split("+")}


def test_the_default_race_ranks_by_accuracy_keeps_three_of_eight_at_a_ninth_and_decides_at_a_third():
    """The default schedule (docs/selection.md, "The default schedule", run 19): replayed on the validation curves of
    both datasets, with the embedded model's pooler trained and before, ranking by validation accuracy at 1/9 and
    1/3 of the run chose within 1 point of the best in under a third of the sweep's time in all four; ranking by loss
    chose the bottleneck adapter (lower loss, lower accuracy) in three of them."""
    from ft_plugin.auto import DEFAULT_AUTO_METHODS, AutoArguments, kept_count

    auto = AutoArguments()
    methods = len(DEFAULT_AUTO_METHODS.split(","))
    assert (auto.auto_horizon, auto.auto_eta, auto.auto_metric) == (1 / 3, 3, "accuracy")
    assert rung_steps(126, methods, auto.auto_horizon, auto.auto_eta) == [14, 42]  # the tweets' 126-step run
    assert rung_steps(215, methods, auto.auto_horizon, auto.auto_eta) == [24, 72]  # BBC headlines' 215 steps
    assert kept_count(methods, last_rung=False, eta=auto.auto_eta) == 3


def test_a_tie_in_accuracy_goes_to_the_lower_loss_and_the_drop_says_so():
    from ft_plugin.auto import drop_reason, rank_methods

    accuracy = {"lora": 0.70, "adapter": 0.70, "ia3": 0.65}
    loss = {"lora": 0.61, "adapter": 0.58, "ia3": 0.50}
    ranked = rank_methods(accuracy, loss, higher_is_better=True)
    assert ranked == ["adapter", "lora", "ia3"]
    assert drop_reason("eval_accuracy", "lora", ranked, 1, accuracy, loss, True) == (
        "eval_accuracy 0.7000 tied with the worst of the 1 kept, eval_loss 0.6100 above its 0.5800"
    )
    assert drop_reason("eval_accuracy", "ia3", ranked, 2, accuracy, loss, True) == (
        "eval_accuracy 0.6500 below the 2 kept (worst kept 0.7000)"
    )
    by_loss = {"lora": 0.9, "adapter": 0.8, "ia3": 0.95}
    ranked = rank_methods(by_loss, by_loss, higher_is_better=False)
    assert ranked == ["adapter", "lora", "ia3"]
    assert drop_reason("eval_loss", "ia3", ranked, 2, by_loss, by_loss, False) == (
        "eval_loss 0.9500 above the 2 kept (worst kept 0.9000)"
    )


def test_before_the_last_rung_accuracies_a_few_validation_examples_apart_tie_and_the_loss_decides():
    """Drug reviews, 60 validation texts (docs/selection.md run 20): at the first rung six methods predicted the
    majority class (0.65) and LoRA and DoRA, lowest in loss, one review less; ranked by accuracy alone the race
    dropped them and chose IA3, 2.6 points below the best. Within three examples the loss decides before the last
    rung; the last rung, which chooses, and a validation set large enough to resolve the gap rank by accuracy."""
    from ft_plugin.auto import TIED_EXAMPLES, drop_reason, rank_methods, tie_margin

    accuracy = {"full": 0.65, "freeze": 0.65, "lora": 38 / 60, "dora": 38 / 60, "adalora": 0.65, "ia3": 0.65,
                "prefix": 0.65, "adapter": 0.65}  # fmt: skip
    loss = {"full": 0.985, "freeze": 0.938, "lora": 0.831, "dora": 0.830, "adalora": 1.108, "ia3": 0.848,
            "prefix": 0.942, "adapter": 0.879}  # fmt: skip
    assert TIED_EXAMPLES == 3 and tie_margin("eval_accuracy", 60, last_rung=False) == pytest.approx(3 / 60)
    assert tie_margin("eval_accuracy", 60, last_rung=True) == 0.0
    assert tie_margin("eval_loss", 60, last_rung=False) == tie_margin("eval_f1_macro", 60, last_rung=False) == 0.0

    margin = tie_margin("eval_accuracy", 60, last_rung=False)
    ranked = rank_methods(accuracy, loss, higher_is_better=True, margin=margin)
    assert ranked[:3] == ["dora", "lora", "ia3"]
    assert drop_reason("eval_accuracy", "adapter", ranked, 3, accuracy, loss, True, margin) == (
        "eval_accuracy 0.6500 tied with the worst of the 3 kept, eval_loss 0.8790 above its 0.8480"
    )
    assert drop_reason("eval_accuracy", "ia3", ranked, 2, accuracy, loss, True, margin) == (
        "eval_accuracy 0.6500 within 3 validation examples of the best left (0.6500): tied, eval_loss 0.8480 above "
        "the worst kept's 0.8310"
    )
    assert rank_methods(accuracy, loss, higher_is_better=True)[:3] == ["ia3", "adapter", "freeze"]  # the old race
    # four examples apart is a difference, whatever the loss
    accuracy["lora"] = accuracy["dora"] = 35 / 60
    ranked = rank_methods(accuracy, loss, higher_is_better=True, margin=margin)
    assert ranked[:3] == ["ia3", "adapter", "freeze"]
    assert drop_reason("eval_accuracy", "dora", ranked, 3, accuracy, loss, True, margin) == (
        "eval_accuracy 0.5833 below the 3 kept (worst kept 0.6500)"
    )
    # with 300 validation texts the one-review gap of 60 (1.7 points) is five examples: no tie
    assert tie_margin("eval_accuracy", 300, last_rung=False) == pytest.approx(0.01)


def test_method_auto_races_methods_then_continues_the_winner_to_the_same_model_as_its_run_alone(
    tiny_model_dir, tiny_csv, tmp_path
):
    from ft_plugin.inference import TextClassifier

    out = tmp_path / "auto"
    config = tmp_path / "auto.yaml"
    config.write_text(f"method: auto\nauto_methods: lora,bitfit,prefix\nmodel_name_or_path: {tiny_model_dir}\n")
    common = ["--train_file", str(tiny_csv), "--num_train_epochs", "2", "--per_device_train_batch_size", "8",
              "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false"]  # fmt: skip
    metrics = recipe_main([str(config), *common, "--output_dir", str(out), "--auto_horizon", "0.25", "--auto_eta", "2"],
                          method="lora")  # fmt: skip
    race = json.loads((out / "auto_race.json").read_text())
    winner = race["winner"]
    assert winner in ("lora", "bitfit", "prefix")
    assert set(race["rungs"][0]["scores"]) == {"lora", "bitfit", "prefix"}
    assert [rung["steps"] for rung in race["rungs"]] == [6, 12]  # a quarter of 48 steps decides; one rung before
    assert set(race["dropped"]) == {"lora", "bitfit", "prefix"} - {winner}
    for reason in race["dropped"].values():  # ranked by validation accuracy, ties by loss
        assert reason.startswith("rung ") and "eval_accuracy" in reason
        assert "below the" in reason or ("tied" in reason and "eval_loss" in reason)
    # before the last rung, accuracies within three validation texts tie
    assert [rung["tie_margin"] for rung in race["rungs"]] == [pytest.approx(3 / metrics["eval_samples"]), 0.0]
    # the winner's race checkpoint is where its full run started; the losers' checkpoints are gone
    assert race["checkpoint"] == str(out / "auto-race" / winner / "checkpoint-12")
    assert [folder.name for folder in (out / "auto-race").iterdir()] == [winner]
    assert json.loads((out / "ft_plugin_config.json").read_text())["method"] == winner
    probabilities = TextClassifier.from_pretrained(out).predict(["great love thanks", "awful late bad"])
    assert len(probabilities) == 2 and abs(sum(probabilities[0].values()) - 1) < 1e-4

    # no step was trained twice or differently: the same model as the winner trained alone, in one go
    alone = recipe_main(["--model_name_or_path", str(tiny_model_dir), *common, "--output_dir", str(tmp_path / "alone"),
                         "--method", winner])  # fmt: skip
    for key in ("eval_loss", "test_loss", "test_accuracy"):
        assert metrics[key] == pytest.approx(alone[key], abs=1e-6), key


def test_method_auto_with_one_applicable_method_trains_it_without_a_race(tiny_model_dir, tiny_csv, tmp_path):
    out = tmp_path / "auto"
    recipe_main(["--method", "auto", "--auto_methods", "adapter,lora", "--target_modules", "q_proj",
                 "--model_name_or_path", str(tiny_model_dir), "--train_file", str(tiny_csv), "--output_dir", str(out),
                 "--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no",
                 "--load_best_model_at_end", "false"])  # fmt: skip
    race = json.loads((out / "auto_race.json").read_text())
    assert race["winner"] == "adapter" and race["rungs"] == [] and race["checkpoint"] is None
    assert "cannot be applied" in race["dropped"]["lora"]
    assert json.loads((out / "ft_plugin_config.json").read_text())["method"] == "adapter"


def test_method_auto_rerun_reuses_the_recorded_race_instead_of_racing_again(tiny_csv, tmp_path, monkeypatch):
    """An interrupted auto run, started again: the race in auto_race.json decides, and the run resumes its
    checkpoint."""
    import ft_plugin.auto as auto

    out = tmp_path / "auto"
    checkpoint = out / "auto-race" / "bitfit" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    (out / "auto_race.json").write_text(json.dumps({"winner": "bitfit", "checkpoint": str(checkpoint)}))
    monkeypatch.setattr(auto, "race", lambda *args: pytest.fail("raced again"))
    argv, data = auto.resolve_auto(["--method", "auto", "--train_file", str(tiny_csv), "--output_dir", str(out)])
    assert data is None  # no race ran: the final run loads the data itself
    assert argv[-4:] == ["--resume_from_checkpoint", str(checkpoint), "--method", "bitfit"]


@pytest.mark.parametrize(("value", "share"), [("1/3", 1 / 3), ("0.4", 0.4), ("1", 1.0)])
def test_auto_horizon_takes_a_decimal_or_a_fraction(value, share):
    from transformers import HfArgumentParser

    from ft_plugin.auto import AutoArguments

    (auto,) = HfArgumentParser(AutoArguments).parse_args_into_dataclasses(["--auto_horizon", value])
    assert auto.auto_horizon == share and json.loads(json.dumps(auto.auto_horizon)) == share


@pytest.mark.parametrize("value", ["third", "1/0"])
def test_an_auto_horizon_that_is_no_number_is_one_line(value, tiny_csv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe_main(["--method", "auto", "--auto_horizon", value, "--train_file", str(tiny_csv),
                     "--output_dir", str(tmp_path / "auto")])  # fmt: skip
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith(f"--auto_horizon/--auto-horizon: invalid Share value: '{value}'")
    )


def test_method_auto_with_an_unmeasured_metric_is_a_user_error(tiny_csv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe_main(["--method", "auto", "--auto_metric", "bleu", "--train_file", str(tiny_csv),
                     "--output_dir", str(tmp_path / "auto")])  # fmt: skip
    assert exit_info.value.code == 2
    assert "--auto_metric bleu is not measured: choose from loss, accuracy, f1_macro" in capsys.readouterr().err


def test_method_auto_with_no_applicable_method_is_a_user_error(tiny_model_dir, tiny_csv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe_main(
            ["--method", "auto", "--auto_methods", "lora,ia3", "--target_modules", "q_proj",
             "--model_name_or_path", str(tiny_model_dir), "--train_file", str(tiny_csv), "--output_dir", str(tmp_path)]
        )  # fmt: skip
    assert exit_info.value.code == 2
    assert "None of --auto_methods lora,ia3 applies" in capsys.readouterr().err


@pytest.mark.parametrize("steps, evals, interval", [(7, 4, 2), (8, 4, 2), (100, 4, 25), (3, 4, 1), (1, 4, 1)])
def test_a_trial_evaluates_at_most_evals_per_epoch_times(steps, evals, interval):
    from ft_plugin.search import evaluation_interval

    assert evaluation_interval(steps, evals) == interval
    assert math.ceil(steps / interval) <= evals or interval == 1
