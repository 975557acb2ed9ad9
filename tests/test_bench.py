"""Smoke runs of the benchmarks on a tiny setting, so the scripts cannot rot (figures come from full runs).

Each runs its `main(argv)` in this process (what `python bench/<script>.py ARGS` calls), with its results written
to a temporary folder. `space_load.py` has its own test (tests/test_space_load.py).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from ft_plugin.select import SCORERS


def run_bench(script: str, args: list[str], results: Path) -> dict:
    saved = dict(os.environ)  # the inference benchmark configures the Space it launches through the environment
    os.environ["FT_PLUGIN_BENCH_RESULTS"] = str(results)
    try:
        importlib.import_module(f"bench.{script}").main(args)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    output = args[args.index("--output") + 1] if "--output" in args else script
    return json.loads((results / f"{output}.json").read_text())


@pytest.mark.parametrize(
    "script,args",
    [
        ("throughput", ["--steps", "2", "--warmup", "1", "--repeats", "1", "--batch_size", "4", "--max_length", "32",
                        "--methods", "lora", "--profile", "--variant", "no-attn-dropout=--attention_dropout 0"]),
        ("methods", ["--methods", "lora", "adapter", "--seeds", "1", "--max_train_samples", "32",
                     "--max_predict_samples", "16", "--num_train_epochs", "1", "--max_seq_length", "32",
                     "--variant", "lora r4=lora --lora_r 4"]),
        ("inference", ["--repeats", "3", "--max_seq_length", "32", "--accuracy_samples", "40",
                       "--lora_flags=--target_modules all-linear"]),
        ("work_scaling", ["--lengths", "16", "32", "--sizes", "32", "--batch_sizes", "4", "--batch_size", "4",
                          "--batch_length", "32", "--steps", "2", "--warmup", "1", "--repeats", "2"]),
        ("lora_step", ["--pairs", "2", "--warmup", "1", "--batch_size", "4", "--max_seq_length", "32"]),
        ("evaluation", ["--max_eval_samples", "24", "--batch_size", "4", "--max_seq_length", "32", "--repeats", "1"]),
        ("auto", ["--methods", "lora,bitfit", "--max_train_samples", "64", "--max_eval_samples", "16",
                  "--max_predict_samples", "16", "--num_train_epochs", "1", "--max_seq_length", "32",
                  "--auto_horizon", "1/2", "1", "--auto_eta", "2", "--text_column", "text", "--label_column", "label"]),
        ("race_curves", ["--methods", "lora,bitfit", "--max_train_samples", "64", "--max_eval_samples", "16",
                         "--num_train_epochs", "1", "--max_seq_length", "32", "--eval_every", "1", "--until", "1",
                         "--metrics", "loss", "accuracy"]),
    ],
)  # fmt: skip
def test_benchmark_runs_and_writes_its_table(script, args, tiny_model_dir, tiny_csv, tmp_path):
    if script in ("auto", "race_curves"):  # several training runs: on the tiny CSV, not the 37k embedded tweets
        args = [*args, "--train_file", str(tiny_csv)]
    threads = torch.get_num_threads()
    payload = run_bench(script, [*args, "--model_name_or_path", str(tiny_model_dir)], tmp_path)
    assert payload["machine"]["threads"] >= 1 and payload["rows"]
    # a benchmark leaves the process's threads as it found them (the inference one launches the Space, which serves
    # with fewer), so the threads it records are the ones its figures were measured with
    assert torch.get_num_threads() == payload["machine"]["threads"] == threads
    if script == "throughput":
        variants = {row["variant"] for row in payload["rows"]}
        assert len(variants) == 4 and all(row["samples_per_s"] > 0 for row in payload["rows"])
        assert "ft-plugin no-attn-dropout" in variants and all(row["vs_ft_plugin"] > 0 for row in payload["rows"])
        assert len(payload["gemm_peaks_after_runs"]) == 4  # one after each run: each run's share uses its own
        assert [len(run["per_repeat"]) for run in payload["runs"]] == [1] * 4  # every run's own figures kept too
        assert all(row["share_of_local_peak"] > 0 and row["share_of_gemm_peak"] > 0 for row in payload["rows"])
        shares = [row["self_cpu_%"] for row in payload["profile"]]  # the top operators, largest first
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.001
        assert any(row["operator"].startswith("aten::") for row in payload["profile"])
    if script == "methods":
        assert (tmp_path / "methods.png").stat().st_size > 0
        assert all(0 <= row["test_accuracy"] <= 1 and row["trainable_params"] > 0 for row in payload["rows"])
        rows = {row["method"]: row for row in payload["rows"]}  # the variant is a row of its own, on its own flags
        assert list(rows) == ["lora", "adapter", "lora r4"] and rows["lora r4"]["family"] == rows["lora"]["family"]
        assert rows["lora r4"]["trainable_params"] < rows["lora"]["trainable_params"]
    if script == "work_scaling":
        by_length = payload["by_length"]
        assert [row["max_seq_length"] for row in by_length] == [16, 32]
        # the texts fill the length: twice the length, twice the real tokens per sample
        tokens_per_sample = [row["tokens_per_s"] / row["samples_per_s"] for row in by_length]
        assert tokens_per_sample == [pytest.approx(16), pytest.approx(32)]
        assert payload["by_size"][0]["train_seconds"] > 0 and payload["by_batch"][0]["train_memory_mb"] >= 0
        for row in by_length + payload["by_size"] + payload["by_batch"]:  # every setting once per round; medians
            assert len(row["runs"]) == 2
            assert min(r["samples_per_s"] for r in row["runs"]) <= row["samples_per_s"]
            assert row["samples_per_s"] <= max(r["samples_per_s"] for r in row["runs"])
    if script == "auto":  # the winner's full run resumed from its race checkpoint: the same model as in the sweep
        assert payload["auto_method"] in ("lora", "bitfit") and payload["auto_equals_its_sweep_run"]
        assert len(payload["rows"]) == 4 and payload["race"]["rungs"][0]["steps"] == 1
        # a race per horizon against the one sweep: at the whole run the rung is the sweep's last step (2 of 2)
        schedules = [(race["auto_horizon"], race["auto_eta"], race["auto_metric"]) for race in payload["races"]]
        assert schedules == [(0.5, 2, "accuracy"), (1.0, 2, "accuracy")]  # the race's default metric
        assert (
            payload["races"][1]["race"]["rungs"][0]["steps"] == 2 and payload["races"][1]["auto_equals_its_sweep_run"]
        )
    if script == "race_curves":  # 64 samples, batch 32: evaluated after steps 1 and 2, ranked against step 2
        assert [row["step"] for row in payload["rows"]] == [1, 2] and payload["rows"][-1]["tau_vs_last"] == 1.0
        assert all(len(points) == 2 for points in payload["curves"].values())
        # each default schedule replayed per metric: two methods, one rung; the loser trains to it, the winner its
        # whole run
        assert [r["metric"] for r in payload["replays"]] == ["loss"] * 5 + ["accuracy"] * 5
        for replayed in payload["replays"]:
            (rung,) = replayed["rungs"]
            loser = ({"lora", "bitfit"} - {replayed["winner"]}).pop()
            assert replayed["steps_trained"] == {replayed["winner"]: 2, loser: rung}
            at_rung = {m: next(p for p in points if p["step"] == rung) for m, points in payload["curves"].items()}
            key = "eval_accuracy" if replayed["metric"] == "accuracy" else "eval_loss"
            best = max if replayed["metric"] == "accuracy" else min
            assert at_rung[replayed["winner"]][key] == best(point[key] for point in at_rung.values())
        # the same replays from the written curves, without training again
        again = run_bench("race_curves", ["--curves", str(tmp_path / "race_curves.json"), "--metrics", "loss",
                                          "accuracy", "--output", "race_replays"], tmp_path)  # fmt: skip
        assert again["replays"] == payload["replays"] and again["curves"] == payload["curves"]
    if script == "lora_step":  # every forward timed on the same batches, in turns
        rows = {row["forward"]: row for row in payload["rows"]}
        assert list(rows) == ["fused (default)", "addmm only", "PEFT forward"]
        assert rows["fused (default)"]["over_default"] == 1 and rows["PEFT forward"]["over_default"] > 0
        layers = {name: set(row["lora_layers"]) for name, row in rows.items()}
        assert layers == {"fused (default)": {"FusedLoraLinear"}, "addmm only": {"AddmmOnlyLoraLinear"},
                          "PEFT forward": {"Linear"}}  # fmt: skip
        assert {name: len(values) for name, values in payload["ratios"].items()} == {"addmm only": 2, "PEFT forward": 2}
    if script == "evaluation":  # the same model on the same texts: the order changes the speed, not the loss
        by_order = {row["order"]: row for row in payload["rows"]}
        assert len({round(row["eval_loss"], 4) for row in payload["rows"]}) == 1
        assert by_order["ft-plugin (longest first)"]["padding_share"] <= by_order["dataset order"]["padding_share"]
    if script == "inference":
        models = {"unmerged (PeftModel)", "merged", "exported merged", "merged int8", "Space /predict (gradio_client)"}
        assert {row["model"] for row in payload["rows"]} == models
        assert payload["accuracy"]["texts"] == 40 and 0 <= payload["accuracy"]["merged int8"] <= 1
        assert all(0 < row["p50_ms"] <= row["p95_ms"] for row in payload["rows"])
        assert {"query", "key", "value", "dense"} <= set(payload["lora_target_modules"])  # --lora_flags reached it


def test_a_replayed_race_prefers_the_fast_starter_early_and_the_better_method_late():
    """`bench/race_curves.py` replays a race on validation curves with the race's own ranking: a method that
    leads early and is overtaken wins a race that decides early, and loses one that decides late."""
    from bench.race_curves import replay, with_sweep

    full_steps = 90
    steps = range(1, 61)
    loss = {
        "fast": {s: 1.0 - 0.4 * min(s, 20) / 20 for s in steps},  # 0.6 from step 20 on
        "slow": {s: 1.0 - 0.6 * s / 60 for s in steps},  # passes 0.6 after step 40
        "bad": {s: 1.0 for s in steps},
        "worse": {s: 1.1 for s in steps},
    }
    early = replay(loss, full_steps, horizon=1 / 3, eta=2)  # rungs at 15 and 30
    assert early["rungs"] == [15, 30] and early["kept"] == [["fast", "slow"], ["fast"]]
    assert early["winner"] == "fast"
    assert early["steps_trained"] == {"fast": 90, "slow": 30, "bad": 15, "worse": 15}
    late = replay(loss, full_steps, horizon=2 / 3, eta=2)  # rungs at 30 and 60
    assert late["winner"] == "slow" and late["steps_trained"] == {"fast": 60, "slow": 90, "bad": 30, "worse": 30}

    seconds = {"fast": 90.0, "slow": 180.0, "bad": 90.0, "worse": 90.0}  # 1 s a step, slow 2 s
    sweep = {"exhaustive": {m: {"test_accuracy": acc, "seconds": seconds[m]} for m, acc in
                            {"fast": 0.80, "slow": 0.85, "bad": 0.5, "worse": 0.4}.items()}}  # fmt: skip
    assert with_sweep(early, sweep, full_steps) == {
        "winner_test_accuracy": 0.80, "gap_points": 5.0, "training_time_ratio": round((90 + 60 + 30) / 450, 3),
    }  # fmt: skip
    assert with_sweep(late, sweep, full_steps)["gap_points"] == 0.0


def test_the_lora_baselines_adapt_the_layers_that_ft_plugin_adapts_by_default(tiny_model_dir):
    """A fair opponent: the hand-written baselines (their LoRA layers written as a user would) put LoRA on the same
    layers as the recipe's default, so a speed ratio compares the same work."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from transformers import AutoModelForSequenceClassification

    from bench.baselines.peft_trainer import LORA_TARGETS
    from ft_plugin.methods.peft_tuners import hidden_state_targets

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3)

    def adapted(targets: list[str]) -> set[str]:
        config = LoraConfig(target_modules=targets)
        return {name for name, _ in model.named_modules() if check_target_module_exists(config, name)}

    layers = adapted(LORA_TARGETS)
    assert layers == adapted(hidden_state_targets(model)) and len(layers) == 5 * model.config.num_hidden_layers


def test_throughput_repeats_start_at_different_runs():
    """A machine's speed drifts within a repeat: the run timed first after the repeat's GEMM peak changes."""
    from bench.throughput import rotated

    runs = ["lora ft-plugin", "lora baseline", "lora naive", "full ft-plugin", "full baseline", "full naive"]
    orders = [rotated(runs, repeat, 3) for repeat in range(3)]
    assert [order[0] for order in orders] == ["lora ft-plugin", "lora naive", "full baseline"]
    assert all(sorted(order) == sorted(runs) for order in orders)
    assert orders[1] == runs[2:] + runs[:2]  # the same cycle, from another start
    assert rotated(runs, 0, 1) == runs


def test_model_flops_count_every_token_s_matmuls_and_attention_s_backward_without_weights(tiny_model_dir):
    """The share of the GEMM peak divides these FLOPs: the encoder's per-token linear layers (not the pooler or the
    head, which see one vector per sequence), and attention's weightless matmuls whose backward is 2x forward for
    LoRA too. With frozen weights the first block's query, key and value read the frozen embeddings: no backward."""
    from transformers import AutoConfig, AutoModel

    from bench._common import encoder_matmul_parameters, frozen_input_parameters, training_flops

    config = AutoConfig.from_pretrained(tiny_model_dir)
    hidden, layers, inner = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    encoder = AutoModel.from_pretrained(tiny_model_dir)
    params, input_only = encoder_matmul_parameters(encoder), frozen_input_parameters(encoder)
    assert params == layers * (4 * hidden * hidden + 2 * hidden * inner)
    assert input_only == 3 * hidden * hidden
    assert all(parameter.requires_grad for parameter in encoder.parameters())  # left as it was
    batches = [(2, 5, 9), (3, 4, 12)]  # (sequences, padded length, real tokens)
    tokens = 2 * 5 + 3 * 4
    linear = 2 * params * tokens
    attention = 4 * layers * hidden * (2 * 5**2 + 3 * 4**2)
    assert training_flops(batches, params, layers, hidden, full=True) == 3 * linear + 3 * attention
    assert training_flops(batches, params, layers, hidden, full=True, input_only_params=input_only) == (
        3 * linear + 3 * attention
    )  # full fine-tuning trains the embeddings: every input gradient is needed
    assert training_flops(batches, params, layers, hidden, full=False, input_only_params=input_only) == (
        2 * linear - 2 * input_only * tokens + 3 * attention
    )


def test_selection_benchmark_reports_tau_and_the_time_ratio_of_each_scorer(tiny_model_dir, tiny_csv, tmp_path):
    cut = f"{tiny_model_dir}-first1"
    payload = run_bench(
        "selection",
        ["--datasets", str(tiny_csv), "--candidates", str(tiny_model_dir), cut, "--selection_samples", "60",
         "--train_samples", "60", "--epochs", "1", "--max_seq_length", "32"],
        tmp_path,
    )  # fmt: skip
    (dataset,) = payload["datasets"]
    assert not Path(cut).exists()  # the runs stay in the bench's folder, not beside (or in) the candidate's own
    assert set(dataset["fine_tuned"]) == {str(tiny_model_dir), cut} and set(dataset["kendall_tau"]) == set(SCORERS)
    assert dataset["features_from"] == {cut: f"{tiny_model_dir}, after layer 1 of 2"}  # one forward pass for both
    by_scorer = dataset["time_ratio_by_scorer"]
    assert set(by_scorer) == set(SCORERS) and all(0 < ratio <= dataset["time_ratio"] for ratio in by_scorer.values())


def test_scaling_benchmark_launches_one_and_two_processes_with_the_shipped_configs(tiny_model_dir, tmp_path):
    importlib.import_module("bench.scaling").main(
        ["--processes", "1", "2", "--model", str(tiny_model_dir), "--steps", "2", "--per_device_batch", "4",
         "--max_seq_length", "32", "--results_dir", str(tmp_path)]
    )  # fmt: skip
    (path,) = tmp_path.glob("scaling-cpu-*.json")
    rows = json.loads(path.read_text())["rows"]
    assert [row["global_batch"] for row in rows] == [4, 8]  # weak scaling: the per-device batch is fixed
    assert "--config_file accelerate_configs/cpu.yaml --num_processes 1" in rows[0]["command"]
    assert "--config_file accelerate_configs/cpu_ddp.yaml --num_processes 2" in rows[1]["command"]
    assert all(row["samples_per_second"] > 0 and row["train_seconds"] > 0 for row in rows)


def test_bbc_headlines_are_deduplicated_and_split_once_stratified(tmp_path):
    from bench.selection import bbcnews_files

    source = tmp_path / "data"
    for topic in ("business", "sports"):
        (source / topic).mkdir(parents=True)
        for i in range(40):
            (source / topic / f"{i:03}.txt").write_text(f"{topic} headline {i}\n\nThe article's body.\n")
    (source / "sports" / "900.txt").write_text("sports headline 1\n\nThe same story, filed twice.\n")
    files = bbcnews_files(tmp_path / "csv", source)
    splits = {name: pd.read_csv(path) for name, path in files.items()}
    assert {name: len(rows) for name, rows in splits.items()} == {
        "train_file": 52,
        "validation_file": 8,
        "test_file": 20,
    }
    texts = [text for rows in splits.values() for text in rows["text"]]
    assert len(texts) == len(set(texts)) == 80  # the repeated headline once, every headline in one split only
    assert all((rows["label"].value_counts() == len(rows) // 2).all() for rows in splits.values())  # stratified
    assert not any("body" in text for text in texts)  # the headline, not the article


def test_the_curves_see_the_scores_the_race_sees(tiny_model_dir, tiny_csv, tmp_path):
    """A replay is only as good as its curves: with dropout on, the curves' loss at a rung equals the race's score
    there, though the curves evaluate at every step and the race stops, saves, evaluates and resumes."""
    import shutil

    from bench.race_curves import main as race_curves
    from ft_plugin.auto import AutoArguments, race

    model = tmp_path / "tiny-with-dropout"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"hidden_dropout_prob": 0.2}))
    flags = ["--model_name_or_path", str(model), "--train_file", str(tiny_csv), "--max_train_samples", "64",
             "--max_eval_samples", "16", "--num_train_epochs", "3", "--max_seq_length", "32"]  # fmt: skip
    os.environ["FT_PLUGIN_BENCH_RESULTS"] = str(tmp_path)
    try:
        curves = race_curves(
            [*flags, "--methods", "lora,bitfit", "--eval_every", "1", "--schedules", "0.5:2", "--metrics", "loss"]
        )
    finally:
        del os.environ["FT_PLUGIN_BENCH_RESULTS"]
    (replayed,) = curves["replays"]
    assert replayed["rungs"] == [3]  # 2 steps an epoch, 6 in all; evaluated after steps 1 and 2 before the rung

    race_flags = [*flags, "--seed", "42", "--eval_strategy", "no", "--save_strategy", "no"]
    result, _ = race(
        race_flags,
        AutoArguments(auto_methods="lora,bitfit", auto_horizon=0.5, auto_eta=2, auto_metric="loss"),
        tmp_path,
    )
    (rung,) = result.rungs
    at_rung = {m: next(p["eval_loss"] for p in points if p["step"] == 3) for m, points in curves["curves"].items()}
    assert rung["steps"] == 3 and rung["scores"] == pytest.approx(at_rung, abs=1e-6)
    assert result.winner == replayed["winner"]


def test_race_curve_schedules_take_fractions_and_bad_ones_are_one_line():
    from bench.race_curves import parse_schedule

    assert parse_schedule("1/3:3") == (1 / 3, 3)
    assert parse_schedule("0.4:4") == (0.4, 4)
    with pytest.raises(SystemExit, match=r"--schedules 'third:3' is not horizon:eta, e.g. 0.4:4 or 1/3:3\.$"):
        parse_schedule("third:3")


def test_replaying_earlier_curves_names_what_they_lack_in_one_line(tmp_path):
    from bench.race_curves import main as race_curves

    points = [{"step": 2, "eval_loss": 0.5, "eval_accuracy": 0.8}]
    curves = tmp_path / "curves.json"
    curves.write_text(json.dumps({"full_steps": 4, "curves": {"lora": points, "bitfit": points}}))
    with pytest.raises(SystemExit, match=r"curves.json has no f1_macro curves \(rerun them\)\.$"):
        race_curves(["--curves", str(curves), "--metrics", "f1_macro", "--schedules", "0.5:2"])
    with pytest.raises(
        SystemExit, match=r"was not evaluated at every rung of 1:2 \(rerun the curves with that schedule\)"
    ):
        race_curves(["--curves", str(curves), "--schedules", "0.5:2", "1:2"])
    with pytest.raises(SystemExit, match=r"curves.json does not record its validation size: pass --validation_size"):
        race_curves(["--curves", str(curves), "--metrics", "accuracy", "--schedules", "0.5:2"])


def test_a_benchmark_given_a_folder_that_is_no_result_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """`bench/inference.py --adapter <empty folder>` (a typo, a result not written yet): ft-plugin's one-line error
    and status 2, not a traceback from the loader."""
    from bench._common import run_as_command
    from bench.inference import main as inference

    monkeypatch.setattr("bench._common.use_fast_allocator", lambda: None)  # no re-run of pytest's command line
    monkeypatch.setattr("sys.argv", ["inference.py"])
    with pytest.raises(SystemExit) as exit_info:
        run_as_command(lambda: inference(["--adapter", str(tmp_path), "--no_space"]))
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith("inference.py: error: ") and "is not an ft-plugin result" in line
