"""The Space under load: concurrent `gradio_client` users call /predict while one training job runs.

    python bench/space_load.py                              # 20 clients for 30 s, a bert-tiny LoRA job training
    python bench/space_load.py --clients 4 --seconds 5      # a quick look
    python bench/space_load.py --quantize int8              # the Space serving int8 models (FT_PLUGIN_SPACE_QUANTIZE)

The Space runs in this process on 127.0.0.1 only (a free port). Steps: train the job once alone (the reference),
then start the same job again and, while it trains, let `--clients` clients call /predict in a closed loop (each
sends its next text when the last answer arrived) for `--seconds`. The clients run in a separate process, as
remote users would (they share the machine's 2 cores with the Space, not its Python interpreter). Bounded: every
call has a timeout, clients stop at the deadline, the job is cancelled if it outlives `--train_timeout`. Reports
requests served, p50/p95/max latency (queueing included), errors, and whether the job under load ended with the
reference's metrics.
Writes bench/results/space_load.json. Target: 0 errors, p95 <= 1 s, identical training result.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import print_table, run_as_command, write_json  # noqa: E402

CALL_TIMEOUT = 30.0  # seconds; a call slower than this counts as an error


def load_app(runs_dir: Path, results_dir: Path | None = None):
    """space/app.py as a module, saving its runs under `runs_dir` and offering the results in `results_dir`."""
    os.environ["FT_PLUGIN_SPACE_RUNS"] = str(runs_dir)
    os.environ["FT_PLUGIN_SPACE_RESULTS"] = str(results_dir or runs_dir)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    spec = importlib.util.spec_from_file_location("ft_plugin_space_load", ROOT / "space" / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_once(client, args) -> dict:
    """Submit one /train job through the API; returns the job and a function waiting for its summary."""
    job = client.submit(
        train_file=None, text_column=None, label_column=None, base=args.train_model, method="lora",
        learning_rate=5e-4, epochs=args.epochs, batch_size=16, max_samples=args.train_samples, max_minutes=10,
        options={}, api_name="/train",
    )  # fmt: skip
    return job, lambda: job.result(timeout=args.train_timeout)[2]


def final_metrics(summary: dict) -> dict[str, float]:
    results = json.loads((Path(summary["output_dir"]) / "all_results.json").read_text())
    return {k: v for k, v in results.items() if k.split("_")[-1] in ("loss", "accuracy", "macro")}


def client_loop(url: str, texts: list[str], start: threading.Event, deadline: list[float], out: dict) -> None:
    """One user: predict in a closed loop until the deadline; latencies and errors go to `out`."""
    from gradio_client import Client

    try:
        # ssl_verify=False: the URL is plain http; otherwise httpx builds a certificate context for each request
        # (gradio_client opens a new httpx client per call, encode/httpx#2298), which took 68 % of the clients' CPU
        # here: CPU that remote users spend on their own machines, not on the Space's 2 cores.
        client = Client(url, verbose=False, ssl_verify=False)
    except Exception as error:  # noqa: BLE001 - a user who cannot connect is an error, not a hang
        out["errors"].append(f"connect: {type(error).__name__}: {str(error)[:200]}")
        return
    finally:
        out["ready"] = True
    start.wait()
    i = 0
    while time.perf_counter() < deadline[0]:
        began = time.perf_counter()
        try:
            client.submit(texts[i % len(texts)], api_name="/predict").result(timeout=CALL_TIMEOUT)
            out["latencies"].append(time.perf_counter() - began)
        except Exception as error:  # noqa: BLE001 - every failure counts, whatever its type
            out["errors"].append(f"{type(error).__name__}: {str(error)[:200]}")
        i += 1


def users_process(url: str, texts: list[str], clients: int, seconds: float, ready, start, results) -> None:
    """The users, in a process of their own (as remote users are: they do not share the Space's GIL): `clients`
    threads, each a `gradio_client.Client`; all connect, then run for `seconds` once `start` is set."""
    outs = [{"latencies": [], "errors": []} for _ in range(clients)]
    go, deadline = threading.Event(), [float("inf")]
    threads = [threading.Thread(target=client_loop, args=(url, texts, go, deadline, out), daemon=True) for out in outs]
    for thread in threads:
        thread.start()
    while not all(out.get("ready") for out in outs):
        time.sleep(0.05)
    ready.set()
    start.wait()
    began = time.perf_counter()
    deadline[0] = began + seconds
    go.set()
    for thread in threads:
        thread.join(seconds + CALL_TIMEOUT + 10)
    results.put({"latencies": [x for out in outs for x in out["latencies"]],
                 "errors": [e for out in outs for e in out["errors"]], "elapsed": time.perf_counter() - began})  # fmt: skip


def wait_until_training(app, job, timeout: float) -> None:
    """Return once the Space's job is in its training phase; an error as soon as the job ends first (it failed, or
    finished before the clients could start), a TimeoutError after `timeout` seconds."""
    deadline = time.perf_counter() + timeout
    while app.RUNNER.current is None or app.RUNNER.current.phase != "training":
        if job.done():
            raise RuntimeError(f"the training job ended before the clients started: {job.outputs()[-1:]}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the training job was not training within {timeout:.0f} s")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--train_model", default="bert-tiny", help="Base model of the training job.")
    parser.add_argument("--train_samples", type=int, default=2000, help="Training texts (sets how long it trains).")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--train_timeout", type=float, default=600.0)
    parser.add_argument(
        "--without_training", action="store_true", help="Only the users: what the Space serves with no job training."
    )
    parser.add_argument("--quantize", choices=["int8"], default=None, help="Serve int8 models (the Space variable).")
    parser.add_argument(
        "--output", default=None, help="Name of the JSON under bench/results/ (default: space_load[-variant])."
    )
    args = parser.parse_args(argv)

    from gradio_client import Client

    if args.quantize:
        os.environ["FT_PLUGIN_SPACE_QUANTIZE"] = args.quantize
    runs = Path(tempfile.mkdtemp(prefix="ft-plugin-space-load-"))
    app = load_app(runs)
    port = free_port()
    extra = [args.train_model] if os.path.isdir(args.train_model) else []
    demo = app.launch(extra, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        control = Client(url, verbose=False)
        texts = app.example_texts(per_label=4)
        control.predict(texts[0], api_name="/predict")  # loads the model once, outside the measurement

        if not args.without_training:
            _, result = train_once(control, args)
            alone = result()
            print(f"training alone: {alone['state']}, {alone['train seconds']} s")

        context = multiprocessing.get_context("spawn")
        ready, start, results = context.Event(), context.Event(), context.Queue()
        users = context.Process(
            target=users_process, args=(url, texts, args.clients, args.seconds, ready, start, results), daemon=True
        )
        users.start()
        if not ready.wait(120):  # every client connected (each fetches the API description)
            raise TimeoutError("the clients did not connect to the Space within 120 s")
        if not args.without_training:
            job, result = train_once(control, args)
            try:  # measure while the job really trains, not while it loads data
                wait_until_training(app, job, args.train_timeout)
            except TimeoutError:
                control.predict(api_name="/cancel")
                raise
        start.set()
        measured = results.get(timeout=args.seconds + CALL_TIMEOUT + 60)
        users.join(30)
        elapsed = measured["elapsed"]
        training_during = app.RUNNER.current is not None
        if not args.without_training:
            try:
                loaded = result()
            except TimeoutError:
                control.predict(api_name="/cancel")
                raise
    finally:
        demo.close()

    latencies, errors = sorted(measured["latencies"]), measured["errors"]
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    same = None if args.without_training else final_metrics(alone) == final_metrics(loaded)
    row = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "requests": len(latencies),
        "req/s": len(latencies) / elapsed,
        "p50 s": quantiles[49],
        "p95 s": quantiles[94],
        "max s": latencies[-1] if latencies else float("nan"),
        "errors": len(errors),
        "trained throughout": training_during,
        "same result": same,
    }
    print_table([row], list(row))
    for error in errors[:5]:
        print("error:", error)
    payload = {"settings": vars(args), "load": row, "errors": errors[:20]}
    if not args.without_training:
        print(
            f"training under load: {loaded['state']}, {loaded['train seconds']} s (alone: {alone['train seconds']} s)"
        )
        payload["training_alone"] = {"seconds": alone["train seconds"], "metrics": final_metrics(alone)}
        payload["training_under_load"] = {"seconds": loaded["train seconds"], "metrics": final_metrics(loaded)}
    name = args.output or (
        "space_load"
        + ("-without-training" if args.without_training else "")
        + (f"-{args.quantize}" if args.quantize else "")
    )
    print("wrote", write_json(name, payload))
    return payload


if __name__ == "__main__":
    run_as_command(main)
