"""The Space under load, short (the CI version of bench/space_load.py), and its upload and path checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gradio")

ROOT = Path(__file__).resolve().parents[1]


def test_concurrent_predictions_while_training_have_no_errors(tiny_model_dir, tmp_path):
    env = {**os.environ, "FT_PLUGIN_BENCH_RESULTS": str(tmp_path), "PYTHONPATH": str(ROOT)}
    # 2,000 texts x 5 epochs: the job trains ~1.8x longer than the 5 s window here: the users are measured against training
    command = [sys.executable, "bench/space_load.py", "--clients", "4", "--seconds", "5",
               "--train_model", str(tiny_model_dir), "--train_samples", "2000", "--epochs", "5",
               "--output", "space_load-ci"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "space_load-ci.json").read_text())  # --output names the table
    load = report["load"]
    assert load["errors"] == 0, report["errors"]
    assert load["requests"] >= 4 and load["p95 s"] < 10  # a loose bound: CI machines are shared
    assert load["trained throughout"], report["training_under_load"]
    assert load["same result"], (report["training_alone"], report["training_under_load"])
    assert {"test_accuracy", "test_loss"} <= set(report["training_alone"]["metrics"])


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from .test_space import load_app

    return load_app(tmp_path_factory.mktemp("space_checks"))


class Session:
    session_hash = "abc123"


def test_uploads_are_size_limited_and_copied_to_the_sessions_own_folder(app, tiny_csv, tmp_path, monkeypatch):
    import gradio as gr

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # where Gradio saves what it receives
    uploaded = Path(gr.utils.get_upload_folder()) / "0123abcd" / tiny_csv.name
    uploaded.parent.mkdir(parents=True)
    shutil.copyfile(tiny_csv, uploaded)
    copy = Path(app.checked_upload(str(uploaded), Session()))
    folder = app.session_dir(Session())
    assert copy.parent == folder and folder.parent == app.SESSIONS_DIR and copy.read_bytes() == tiny_csv.read_bytes()
    with pytest.raises(gr.Error, match="Upload the file first"):  # a server path that was never uploaded
        app.checked_upload(str(tiny_csv), Session())
    for trick in ("../abc123", "abc123/..", "ABC123", ""):  # no other session id reaches this folder
        other = type("Other", (), {"session_hash": trick})()
        assert app.session_dir(other) != folder and app.session_dir(other).parent == app.SESSIONS_DIR
    monkeypatch.setattr(app, "MAX_UPLOAD_MB", tiny_csv.stat().st_size / 2**20 / 2)
    with pytest.raises(gr.Error, match="the limit is"):
        app.checked_upload(str(uploaded), Session())
    app.cleanup_session(Session())
    assert not folder.exists()
    with pytest.raises(gr.Error, match="session has ended"):  # work finishing late does not bring it back
        app.session_dir(Session(), create=False)
    assert not folder.exists()


def test_session_folders_left_by_clients_that_never_closed_are_removed_after_a_day(app, tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(app, "SESSIONS_DIR", tmp_path / "sessions")
    stale, recent = app.session_dir(type("A", (), {"session_hash": "api-1"})()), app.session_dir(Session())
    (stale / "upload.csv").write_text("text,label\n")
    day_ago = time.time() - app.SESSION_TTL_HOURS * 3600 - 60
    os.utime(stale, (day_ago, day_ago))
    app.session_dir(Session())  # an existing session: nothing is pruned
    assert stale.is_dir()
    app.session_dir(type("B", (), {"session_hash": "new"})())  # a new session prunes the stale ones
    assert not stale.exists() and recent.is_dir()


@pytest.mark.parametrize("adapter", ["../../etc", "/etc", "/tmp", "outputs/../../root", "a/b/../../c"])
def test_adapters_outside_the_result_folders_are_refused(app, adapter):
    import gradio as gr

    with pytest.raises(gr.Error, match="Choose an adapter from the list"):
        app.checked_adapter(adapter, Session())


def test_results_and_hub_ids_are_accepted(app):
    import gradio as gr

    run = app.runs_dir(Session()) / "lora-1"
    run.mkdir(parents=True, exist_ok=True)
    assert app.checked_adapter(str(run), Session()) == str(run)
    assert app.checked_adapter("alice/tweets-lora", Session()) == "alice/tweets-lora"
    other = type("Other", (), {"session_hash": "def456"})()  # another session: guessing the path does not help
    with pytest.raises(gr.Error, match="Choose an adapter from the list"):
        app.checked_adapter(str(run), other)
    with pytest.raises(gr.Error, match="Choose a result from the list"):
        app.checked_result(str(run), other)
    assert app.checked_base("minilm-l6") == "minilm-l6"
    with pytest.raises(gr.Error, match="Choose a base model"):
        app.checked_base("/root")
