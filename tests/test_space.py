"""The Gradio Space end to end: the app launched on 127.0.0.1, driven through its API with `gradio_client`.

A tiny random BERT is offered as an extra base model so that training takes seconds; predictions with the
embedded MiniLM-L6 use the real default.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import huggingface_hub
import pytest
import torch

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from ft_plugin.errors import FtPluginError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"negative", "neutral", "positive"}


def load_app(runs_dir: Path):
    """Import space/app.py as a fresh module, saving runs under `runs_dir` (read at import)."""
    os.environ["FT_PLUGIN_SPACE_RUNS"] = str(runs_dir)
    os.environ["FT_PLUGIN_SPACE_RESULTS"] = str(runs_dir)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    spec = importlib.util.spec_from_file_location(f"space_app_{runs_dir.name}", ROOT / "space" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class SessionOf:
    """A stand-in for the `gr.Request` of a `gradio_client` session (its session hash)."""

    def __init__(self, client: Client) -> None:
        self.session_hash = client.session_hash


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def space(tmp_path_factory, tiny_model_dir):
    """(app module, URL) of the Space running in this process."""
    app = load_app(tmp_path_factory.mktemp("space_runs"))
    port = free_port()
    threads = torch.get_num_threads()
    implicit_token = huggingface_hub.constants.HF_HUB_DISABLE_IMPLICIT_TOKEN
    demo = app.launch(
        [str(tiny_model_dir)], server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
    )
    yield app, f"http://127.0.0.1:{port}/"
    for job in app.RUNNER.jobs:
        job.cancel()
        job.wait(60)
    demo.close()
    torch.set_num_threads(threads)  # launch() set the serving threads for this whole process
    huggingface_hub.constants.HF_HUB_DISABLE_IMPLICIT_TOKEN = implicit_token  # and kept the Hub login out of downloads


def test_visitors_hub_downloads_never_carry_the_spaces_own_login(space, monkeypatch):
    """A Hub id a visitor names (base, adapter) must not be fetched with the owner's HF_TOKEN: their private models
    would be anyone's. Pushes still pass a token explicitly."""
    from huggingface_hub.utils import get_token_to_send

    monkeypatch.setenv("HF_TOKEN", "hf_the_space_owners")
    assert get_token_to_send(None) is None  # what every download without an explicit token sends
    assert get_token_to_send("hf_a_visitors") == "hf_a_visitors"


def test_predictions_leave_the_training_jobs_cores_to_it(space):
    app, _ = space
    assert torch.get_num_threads() == app.SERVE_THREADS == max(1, (os.cpu_count() or 2) - app.TRAIN_THREADS)


@pytest.fixture(scope="module")
def client(space) -> Client:
    return Client(space[1], verbose=False)


def scores(label_output: dict) -> dict[str, float]:
    """`gr.Label`'s API output as {label: probability}."""
    return {item["label"]: item["confidence"] for item in label_output["confidences"]}


def train(client: Client, csv: Path, base: str, **overrides):
    """Submit a /train job on `csv` with `base`; returns the gradio_client job."""
    arguments = dict(
        train_file=handle_file(str(csv)), text_column="text", label_column="label", base=base, method="lora",
        learning_rate=0.01, epochs=1, batch_size=16, max_samples=64, max_minutes=5, options={"lora_r": 4},
    )  # fmt: skip
    arguments.update(overrides)
    return client.submit(**arguments, api_name="/train")  # by name, as space/README.md shows


def test_api_names_the_main_actions(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/predict", "/predict_file", "/train", "/cancel", "/push"} <= set(endpoints)
    predict = endpoints["/predict"]["parameters"]
    assert [p["parameter_name"] for p in predict] == ["text", "base", "adapter"]
    assert [p["parameter_has_default"] for p in predict] == [False, True, True]


def test_predict_with_the_embedded_base_model(client):
    result = scores(client.predict("The flight was delayed three hours and nobody told us why", api_name="/predict"))
    assert set(result) == LABELS
    assert sum(result.values()) == pytest.approx(1.0, abs=1e-4)


def test_concurrent_predictions_share_forward_passes_and_match_one_at_a_time(space, client, monkeypatch):
    import threading

    app, _ = space
    batcher = app.get_batcher(app.AUTO_BASE, app.NO_ADAPTER, None)  # what /predict uses by default
    classifier, batch_sizes = batcher.classifier, []
    predict_batch = classifier.predict

    def recording(texts, batch_size=32):
        batch_sizes.append(len(texts))
        time.sleep(0.3 if len(batch_sizes) == 1 else 0)  # the first call is slow: the others queue behind it
        return predict_batch(texts, batch_size)

    monkeypatch.setattr(classifier, "predict", recording)
    texts = [f"the gate agent was {word} today" for word in ("great", "rude", "late", "kind", "slow", "funny")] * 2
    answers = [None] * len(texts)

    def ask(i: int) -> None:
        answers[i] = scores(Client(space[1], verbose=False).predict(texts[i], api_name="/predict"))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sum(batch_sizes) == len(texts) and max(batch_sizes) > 1, batch_sizes
    for text, answer in zip(texts, answers):
        assert answer == pytest.approx(predict_batch([text])[0], abs=1e-5)  # the batch changes no probability


def test_train_then_predict_with_the_new_adapter(space, client, tiny_model_dir, tiny_csv):
    app, _ = space
    status, curve, summary = train(client, tiny_csv, str(tiny_model_dir), epochs=2, max_samples=128).result(timeout=240)
    assert summary["state"] == "finished" and summary["steps"] == 16  # 128 samples / 16 per batch * 2 epochs
    assert "finished" in status and summary["accuracy"] is not None
    assert {"train loss", "validation accuracy"} <= {row[1] for row in curve["data"]}
    output_dir = Path(summary["output_dir"])
    assert (output_dir / "ft_plugin_config.json").is_file()
    (job,) = [job for job in app.RUNNER.jobs if job.output_dir == output_dir]
    assert job.hub_login is False  # its downloads are anonymous too (a visitor's job)
    assert str(output_dir) in [value for _, value in app.result_choices(SessionOf(client))]  # in Predict at once

    text = "great love thanks the flight"
    from_space = scores(client.predict(text, "auto", str(output_dir), api_name="/predict"))
    from ft_plugin.inference import TextClassifier

    expected = TextClassifier.from_pretrained(output_dir).predict([text])[0]
    assert from_space == pytest.approx(expected, abs=1e-5)
    loaded = app.get_batcher("auto", str(output_dir), SessionOf(client))  # loaded once, then served from the cache
    assert app.get_batcher("auto", str(output_dir), SessionOf(client)) is loaded
    later = time.time() + 10
    os.utime(output_dir, (later, later))  # a result saved again in this folder (its files are renamed in)
    assert app.get_batcher("auto", str(output_dir), SessionOf(client)) is not loaded

    # the same adapter on a base model of another shape is refused in one readable line
    with pytest.raises(AppError, match="different base model"):
        client.predict(text, "minilm-l6", str(output_dir), api_name="/predict")

    # another user neither sees this run nor loads or pushes it by its path
    other_user = Client(space[1], verbose=False)
    assert str(output_dir) not in [value for _, value in app.result_choices(SessionOf(other_user))]
    with pytest.raises(AppError, match="Choose an adapter from the list"):
        other_user.predict(text, "auto", str(output_dir), api_name="/predict")
    with pytest.raises(AppError, match="Choose a result from the list"):
        other_user.predict(str(output_dir), "alice/stolen", "hf_token", False, api_name="/push")
    assert summary["run"] not in set(app.runs_table(SessionOf(other_user)).get("run", []))


def test_cancel_keeps_the_model_trained_so_far_and_a_second_job_waits(space, client, tiny_model_dir, tiny_csv):
    app, _ = space
    job = train(client, tiny_csv, str(tiny_model_dir), epochs=200, max_samples=32, batch_size=4)
    deadline = time.time() + 120
    while (app.RUNNER.current is None or app.RUNNER.current.step < 2) and time.time() < deadline:
        time.sleep(0.2)
    running = app.RUNNER.current
    assert running is not None and running.step >= 2

    started = len(app.RUNNER.jobs)
    other_user = Client(space[1], verbose=False)  # another session: its job waits in Gradio's queue
    second = train(other_user, tiny_csv, str(tiny_model_dir))
    time.sleep(1.0)
    assert len(app.RUNNER.jobs) == started and not second.done()  # waiting in Gradio's queue, not started
    second.cancel()
    assert other_user.predict(api_name="/cancel").startswith("No training job of yours")  # not theirs to stop
    assert running.is_alive()

    assert client.predict(api_name="/cancel").startswith("Cancelling")
    _, _, summary = job.result(timeout=120)
    assert summary["state"] == "cancelled" and 2 <= summary["steps"] < running.max_steps
    assert running.stop_reason.startswith("cancelled at step")
    assert (Path(summary["output_dir"]) / "ft_plugin_config.json").is_file()  # evaluated and saved
    assert client.predict(api_name="/cancel") == "No training job of yours is running."


def test_a_client_that_leaves_cancels_its_job_and_the_next_users_job_waits_then_trains(space, tiny_model_dir, tiny_csv):
    app, url = space
    leaving, waiting = Client(url, verbose=False), Client(url, verbose=False)
    left = train(leaving, tiny_csv, str(tiny_model_dir), epochs=200, max_samples=32, batch_size=4)
    deadline = time.time() + 120
    while (app.RUNNER.current is None or app.RUNNER.current.step < 2) and time.time() < deadline:
        time.sleep(0.2)
    abandoned = app.RUNNER.current
    assert abandoned is not None and abandoned.owner == app.owner_id(SessionOf(leaving))
    queued = train(waiting, tiny_csv, str(tiny_model_dir), epochs=1, max_samples=32)
    left.cancel()  # what closing the browser tab does to the running /train event
    _, _, summary = queued.result(timeout=240)  # waited for the abandoned job to stop, then trained
    assert summary["state"] == "finished" and app.RUNNER.jobs[-1].owner == app.owner_id(SessionOf(waiting))
    assert abandoned.state == "cancelled" and abandoned.step < abandoned.max_steps  # stopped, not trained on
    assert abandoned.has_result  # the model trained so far was still saved, as with Cancel


def test_train_options_and_file_paths_cannot_reach_beyond_the_space(space, client, tiny_model_dir, tiny_csv, tmp_path):
    outside = tmp_path / "outside"
    refused = "cannot be set in the Space"
    for options, message in [
        ({"output_dir": str(outside)}, refused),
        ({"output-dir": str(outside)}, refused),  # argparse's spelling with a dash
        ({"output_di": str(outside)}, refused),  # and its prefix abbreviation
        ({"model_name_or_path": str(tmp_path), "trust_remote_code": True}, refused),  # would run uploaded code
        ({"train_file": str(tiny_csv)}, refused),  # would read any file on the server
        ({"push_to_hub": True, "hub_model_id": "someone/else"}, refused),  # would push with the Space's login
        ({"target_modules": ["query", "--output_dir", str(outside)]}, "invalid value"),  # a flag smuggled in a list
        ({"lora_r": {"nested": 1}}, "invalid value"),
        ({"lora_r": "abc"}, "Invalid arguments: option 'lora_r'"),  # argparse used to exit the server
    ]:
        with pytest.raises(AppError, match=message):
            train(client, tiny_csv, str(tiny_model_dir), options=options).result(timeout=60)
    with pytest.raises(AppError, match="Batch size must be between 1 and"):
        train(client, tiny_csv, str(tiny_model_dir), batch_size=10**6).result(timeout=60)
    with pytest.raises(AppError, match="Max minutes is at most"):
        train(client, tiny_csv, str(tiny_model_dir), max_minutes=10**7).result(timeout=60)
    with pytest.raises(AppError, match="Option 'gradient_accumulation_steps' must be a number from 1 to 16"):
        train(client, tiny_csv, str(tiny_model_dir), options={"gradient_accumulation_steps": 10**6}).result(timeout=60)
    smuggled = ["text", "--model_name_or_path", str(tmp_path), "--trust_remote_code", "true"]  # a list: more flags
    for column in ("text_column", "label_column"):
        with pytest.raises(AppError, match="must be a name such as 'text'"):
            train(client, tiny_csv, str(tiny_model_dir), **{column: smuggled}).result(timeout=60)
    assert not outside.exists()
    assert scores(client.predict("still serving after all that", api_name="/predict"))

    # a file on the server that nobody uploaded, named by its path in a raw API call (gradio_client would upload it)
    secret = tmp_path / "secret.csv"
    secret.write_text("text,label\nsk-SECRET-123,a\n")
    endpoint = f"{space[1]}gradio_api/call/predict_file"
    named_by_path = {"path": str(secret), "meta": {"_type": "gradio.FileData"}}
    event = httpx.post(endpoint, json={"data": [named_by_path, "text", "auto", "none"]}).json()["event_id"]
    answer = httpx.get(f"{endpoint}/{event}", timeout=60).text
    assert "event: error" in answer and "SECRET" not in answer


def test_bad_inputs_are_readable_errors(space, client, tiny_model_dir, tiny_csv, tmp_path, monkeypatch):
    app, _ = space
    with pytest.raises(AppError, match="text is empty"):
        client.predict("   ", api_name="/predict")

    # the library's messages name command-line flags; a visitor reads the Space's fields
    with pytest.raises(AppError, match=r"column 'review' not found; .*: set the 'Text column' field to one of them\.$"):
        train(client, tiny_csv, str(tiny_model_dir), text_column="review").result(timeout=60)
    with pytest.raises(AppError, match=r"^Invalid arguments: option 'lora_r': invalid int value: 'abc'\.$"):
        train(client, tiny_csv, str(tiny_model_dir), options={"lora_r": "abc"}).result(timeout=60)

    not_csv = tmp_path / "notes.txt"
    not_csv.write_text("just some words\n")
    with pytest.raises(AppError, match="Invalid file type"):  # Gradio's own check of file_types
        client.predict(handle_file(str(not_csv)), "text", api_name="/predict_file")
    image = tmp_path / "photo.csv"  # not a CSV, whatever its name says
    image.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8\xff\xe0" * 8)
    with pytest.raises(AppError, match="is not UTF-8"):
        client.predict(handle_file(str(image)), "text", api_name="/predict_file")

    with pytest.raises(AppError, match="Unknown method"):
        train(client, tiny_csv, str(tiny_model_dir), method="nope").result(timeout=60)

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(AppError, match="Could not download 'nobody/no-such-adapter' .*: check the connection"):
        client.predict("hello", "auto", "nobody/no-such-adapter", api_name="/predict")

    with pytest.raises(AppError, match="repo id"):
        client.predict(str(tmp_path), "no-slash", "", True, api_name="/push")

    # runs finished before survive all of the above
    assert all(job.has_result for job in app.RUNNER.jobs if job.state in ("finished", "cancelled"))


def test_a_failed_jobs_status_shows_its_error_as_text_in_the_spaces_terms(space, tmp_path):
    from ft_plugin.jobs import TrainingJob

    app, _ = space
    job = TrainingJob({"output_dir": str(tmp_path / "failed")})
    job.state = "failed"
    job.error = "Text column '<img src=x onerror=alert(1)>' not found; the columns are text, label: pass --text_column"
    status = app._status_html(job)
    assert "&#x27;&lt;img src=x onerror=alert(1)&gt;&#x27;" in status and "<img" not in status  # input stays text
    assert status.endswith("set the &#x27;Text column&#x27; field</span></div>")


def test_error_pop_ups_show_a_visitors_input_as_text(space, client, tiny_csv):
    # gradio renders a gr.Error's message as HTML; the column name is the visitor's
    with pytest.raises(AppError) as raised:
        client.predict(handle_file(str(tiny_csv)), "<img src=x onerror=alert(1)>", api_name="/predict_file")
    assert "'&lt;img src=x onerror=alert(1)&gt;'" in str(raised.value) and "<img" not in str(raised.value)
    assert "set the 'Text column' field" in str(raised.value)  # quotes stay readable for gradio_client users


def test_predict_file_writes_a_predictions_csv(space, client, tiny_csv, monkeypatch):
    import pandas as pd

    output, preview = client.predict(handle_file(str(tiny_csv)), "text", api_name="/predict_file")
    frame = pd.read_csv(output)
    assert len(frame) == 240 and {"text", "predicted_label", *(f"score_{label}" for label in LABELS)} <= set(frame.columns)  # fmt: skip
    assert set(frame["predicted_label"]) <= LABELS
    assert "predicted_label" in preview["headers"]
    monkeypatch.setattr(space[0], "MAX_FILE_ROWS", 100)
    with pytest.raises(AppError, match="The file has 240 rows: the Space classifies up to 100 at a time"):
        client.predict(handle_file(str(tiny_csv)), "text", api_name="/predict_file")


def test_result_list_survives_a_folder_vanishing_while_it_is_scanned(space, tmp_path, monkeypatch):
    """Other processes create and delete folders under the result roots (e.g. a push's temporary folder in /tmp):
    one that vanishes mid-scan must not break the Space's result list (it did, with FileNotFoundError)."""
    app, _ = space
    kept = tmp_path / "kept" / "run"
    kept.mkdir(parents=True)
    (kept / "ft_plugin_config.json").write_text("{}")
    vanishing, real_glob = tmp_path / "vanishing", Path.glob
    vanishing.mkdir()

    def glob(self, pattern):
        if self == vanishing:  # found a subfolder, then it was deleted before it could be listed
            raise FileNotFoundError(2, "No such file or directory", str(self / "gone"))
        yield from real_glob(self, pattern)

    monkeypatch.setattr(Path, "glob", glob)
    monkeypatch.setattr(app, "RESULT_ROOTS", [vanishing, tmp_path / "kept"])
    assert app.find_results(None) == [kept.resolve()]


def test_long_text_is_truncated_with_a_warning(space):
    app, _ = space
    with pytest.warns(UserWarning, match="only the first 128 were classified"):
        result = app.predict("great flight " * 400, "auto", "none")
    assert set(result) == LABELS


def test_push_calls_the_hub_helper_and_shows_its_errors(space, client, monkeypatch):
    """The Push tab's contract with `ft_plugin.hub.push_result(output_dir, repo_id, token=..., private=...)`."""
    import sys
    import types

    from ft_plugin.errors import ModelError

    calls = []

    def push_result(output_dir, repo_id, token=None, private=False):
        calls.append((output_dir, repo_id, token, private))
        if repo_id.endswith("denied"):
            raise ModelError(
                f"Could not push to '{repo_id}' (401 Unauthorized): check the token; the result is still in "
                f"'{output_dir}'; push it later with `ft-plugin push {output_dir} --repo_id {repo_id}`."
            )  # hub.push_result's words
        return f"https://huggingface.co/{repo_id}"

    app, _ = space
    result = app.runs_dir(SessionOf(client)) / "pushable"  # one of this session's runs (other paths are refused)
    result.mkdir(parents=True, exist_ok=True)
    monkeypatch.setitem(sys.modules, "ft_plugin.hub", types.SimpleNamespace(push_result=push_result))
    link = client.predict(str(result), "alice/tweets-lora", "hf_secret", False, api_name="/push")
    assert link == "Pushed to [https://huggingface.co/alice/tweets-lora](https://huggingface.co/alice/tweets-lora)"
    assert calls == [(str(result), "alice/tweets-lora", "hf_secret", False)]
    with pytest.raises(AppError, match=r"401 Unauthorized.*; push it later from the Push tab\.$"):
        client.predict(str(result), "alice/denied", "hf_wrong", True, api_name="/push")
    for bad in ("../x", "alice/..", "alice/../bob", "a/b/c", "/etc/passwd", "alice/x y"):  # never a path or URL
        with pytest.raises(AppError, match="Give the repo id as 'username/name'"):
            client.predict(str(result), bad, "hf_secret", False, api_name="/push")
    assert len(calls) == 2  # none of those reached the Hub helper

    monkeypatch.setenv("HF_TOKEN", "hf_the_space_owners")  # the server's own login is never a visitor's
    with pytest.raises(AppError, match="Paste a Hugging Face token with write access"):
        client.predict(str(result), "alice/tweets-lora", "", False, api_name="/push")
    assert len(calls) == 2
    monkeypatch.setattr(app, "OWNER_PUSH", True)  # `ft-plugin space --push_as_owner`: a Space of one's own
    client.predict(str(result), "alice/tweets-lora", "", False, api_name="/push")
    assert calls[-1] == (str(result), "alice/tweets-lora", None, False)  # push_result falls back to the login

    monkeypatch.setitem(sys.modules, "ft_plugin.hub", None)  # an ft-plugin without Hub support
    with pytest.raises(AppError, match="no Hub support"):
        client.predict(str(result), "alice/tweets-lora", "hf_secret", False, api_name="/push")


def test_training_job_library_api(tiny_model_dir, tiny_csv, tmp_path):
    """`ft_plugin.jobs` on its own: option errors at submit, a time limit that keeps the model, one job at a time."""
    from ft_plugin.errors import MethodError
    from ft_plugin.jobs import JobRunner, TrainingJob

    options = {
        "method": "lora", "model_name_or_path": str(tiny_model_dir), "train_file": str(tiny_csv),
        "num_train_epochs": 50, "per_device_train_batch_size": 4, "max_train_samples": 32,
        "eval_strategy": "no", "save_strategy": "no", "load_best_model_at_end": False, "report_to": "none",
    }  # fmt: skip
    runner = JobRunner()
    with pytest.raises(MethodError, match="Invalid training options"):
        runner.submit(TrainingJob({**options, "lora_rank": 4, "output_dir": str(tmp_path / "bad")}))
    with pytest.raises(MethodError, match="output_dir"):
        TrainingJob(options)

    job = runner.submit(TrainingJob({**options, "output_dir": str(tmp_path / "limited")}, max_minutes=0.02))
    with pytest.raises(FtPluginError, match="still running"):
        runner.submit(TrainingJob({**options, "output_dir": str(tmp_path / "second")}))
    assert job.wait(120) and job.state == "finished", job.error
    assert job.stop_reason.startswith("time limit of 0.02 min") and 0 < job.step < job.max_steps == 400
    assert job.has_result and job.metrics["test_accuracy"] >= 0 and job.history[0]["step"] >= 1
    assert runner.current is None and [j.name for j in runner.jobs] == ["limited"]

    # another runner (another app) cannot overwrite that result without asking, as with the recipe
    with pytest.raises(FtPluginError, match="already holds a trained result.*--overwrite_output_dir"):
        JobRunner().submit(TrainingJob({**options, "output_dir": str(tmp_path / "limited")}))


def test_a_killed_training_process_fails_its_job_not_the_app(tiny_model_dir, tiny_csv, tmp_path):
    """Jobs train in a child process: killing it (as the kernel's out-of-memory killer would) ends that job with a
    readable error, and the runner takes the next job."""
    import signal

    from ft_plugin.jobs import JobRunner, TrainingJob

    options = {
        "method": "lora", "model_name_or_path": str(tiny_model_dir), "train_file": str(tiny_csv),
        "num_train_epochs": 50, "per_device_train_batch_size": 4, "eval_strategy": "no", "save_strategy": "no",
        "load_best_model_at_end": False, "report_to": "none",
    }  # fmt: skip
    runner = JobRunner()
    job = runner.submit(TrainingJob({**options, "output_dir": str(tmp_path / "killed")}, niceness=5))
    deadline = time.time() + 120
    while job.step < 2 and job.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    assert job.phase == "training" and job.step >= 2
    os.kill(job._process.pid, signal.SIGKILL)
    assert job.wait(30) and job.state == "failed"
    assert job.error == "the training process ended unexpectedly (exit code -9)" and not job.has_result
    follow_up = runner.submit(TrainingJob({**options, "num_train_epochs": 1, "output_dir": str(tmp_path / "next")}))
    assert follow_up.wait(120) and follow_up.state == "finished", follow_up.error


def test_space_serves_int8_models_when_its_variable_asks_and_refuses_an_unknown_value(tmp_path, monkeypatch):
    from torch import nn

    monkeypatch.setenv("FT_PLUGIN_SPACE_QUANTIZE", "int8")
    app = load_app(tmp_path / "int8_runs")
    classifier = app.get_classifier(app.AUTO_BASE, app.NO_ADAPTER, None)
    assert not any(type(module) is nn.Linear for module in classifier.model.modules())
    (prediction,) = classifier.predict(["The flight was delayed three hours and nobody told us why"])
    assert set(prediction) == LABELS and sum(prediction.values()) == pytest.approx(1.0, abs=1e-4)

    monkeypatch.setenv("FT_PLUGIN_SPACE_QUANTIZE", "int4")
    with pytest.raises(FtPluginError, match="FT_PLUGIN_SPACE_QUANTIZE='int4' is not a quantization"):
        load_app(tmp_path / "int4_runs")
    # as a user starts it: `ft-plugin space`, and `python app.py` as a Space does; one line, exit status 2
    env = {**os.environ, "FT_PLUGIN_SPACE_RUNS": str(tmp_path / "int4_runs")}
    for command in (["ft-plugin", "space"], [sys.executable, "space/app.py"]):
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        message = (
            "ft-plugin: error: FT_PLUGIN_SPACE_QUANTIZE='int4' is not a quantization: set it to int8, or unset it."
        )
        assert (result.returncode, result.stderr.strip().splitlines()[-1]) == (2, message), command
        assert "Traceback" not in result.stderr, command


def test_a_jobs_peak_memory_includes_what_was_freed_before_the_step_ended():
    """The Space's memory column: activations live during a step and are freed before `on_step_end`, so reading the
    resident memory only there would miss them."""
    import threading

    import torch

    from ft_plugin.jobs import JobCallback

    reports: list[dict] = []
    callback = JobCallback(reports.append, threading.Event(), None, time.time())
    callback.rss.interval = 0.005
    big = torch.ones(50 * 2**20)  # 200 MB written during the "step"
    time.sleep(0.05)
    del big
    callback.on_step_end(None, type("State", (), {"global_step": 1})(), type("Control", (), {})())
    callback.on_train_end(None, None, None)
    assert reports[0]["step"] == 1 and reports[0]["peak_memory_mb"] > 150
