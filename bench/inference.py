"""Prediction latency: base + LoRA adapter unmerged vs merged vs exported merged vs merged int8 vs the Space's /predict.

    python bench/inference.py                          # trains a small LoRA result first (about 1 minute)
    python bench/inference.py --adapter outputs/lora   # or measure an existing LoRA result folder
    python bench/inference.py --no_space               # without the Space row (no gradio needed)
    python bench/inference.py --lora_flags "--target_modules all-linear"   # LoRA on every linear layer

Single-text and batch-of-32 latency, p50 and p95 over `--repeats` calls after warm-up, measured side by side in one
run on the same texts (real tweets from the embedded test split), the models taking turns call by call. The int8
row is the merged model with dynamically quantized linear layers (`--quantize int8`); its cost is reported as test
accuracy beside the merged model's and the share of texts where the two predict the same label. The small LoRA run
trains in a separate process, so the measuring process is like a serving one (only loading and predicting). The
Space row is one `gradio_client` user calling /predict on the Space launched in this process on 127.0.0.1 (HTTP and
Gradio's queue included; the Space merges the adapter). Writes bench/results/inference.json.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench._common import print_table, run_as_command, run_fresh, write_json  # noqa: E402
from ft_plugin.data import DataArguments, load_data  # noqa: E402
from ft_plugin.inference import TextClassifier, quantize_int8  # noqa: E402
from ft_plugin.metrics import classification_metrics  # noqa: E402


def train_small_lora(model_name_or_path: str | None, max_seq_length: int, lora_flags: str = "") -> str:
    from ft_plugin.recipe import build_trainer, parse_args, train_and_save

    # In a folder of its own: the Space offers the results under the adapter's parent folder (not all of /tmp).
    output_dir = str(Path(tempfile.mkdtemp(prefix="bench-inference-")) / "lora")
    argv = ["--method", "lora", "--output_dir", output_dir, "--max_steps", "20", "--max_train_samples", "640",
            "--max_eval_samples", "32", "--max_predict_samples", "32", "--eval_strategy", "no", "--save_strategy",
            "no", "--load_best_model_at_end", "false", "--max_seq_length", str(max_seq_length),
            *shlex.split(lora_flags)]  # fmt: skip
    if model_name_or_path:
        argv += ["--model_name_or_path", model_name_or_path]
    train_and_save(build_trainer(*parse_args(argv)))
    return output_dir


def space_latencies(adapter: str, texts: list[str], repeats: int) -> list[float]:
    """Single-text /predict calls of one `gradio_client` user on the Space (launched here, on 127.0.0.1). The Space
    serves with the threads a training job leaves it; this process's own thread count is restored afterwards."""
    from gradio_client import Client

    from bench.space_load import free_port, load_app

    threads = torch.get_num_threads()
    app = load_app(Path(tempfile.mkdtemp(prefix="bench-space-runs-")), results_dir=Path(adapter).parent)
    port = free_port()
    demo = app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, ssl_verify=False)  # plain http: see space_load
        runs = []
        for i in range(10 + repeats):  # the first 10: model loading and warm-up
            start = time.perf_counter()
            client.predict(texts[i % len(texts)], "auto", adapter, api_name="/predict")
            runs.append(time.perf_counter() - start)
        return runs[10:]
    finally:
        demo.close()
        torch.set_num_threads(threads)


def latencies(classifiers: dict[str, TextClassifier], texts: list[str], batch: int, repeats: int) -> dict:
    """Seconds per call of each classifier on the same chunks, taken in turn (call i of every model, then call i+1),
    so that a slow moment of a shared machine hits all models alike instead of whichever ran then."""
    for classifier in classifiers.values():
        for i in range(10):  # the first calls of a process are several times slower (allocator and kernel caches)
            classifier.predict_proba(texts[i * batch : (i + 1) * batch], batch_size=batch)
    runs: dict[str, list[float]] = {name: [] for name in classifiers}
    for i in range(repeats):
        chunk = [texts[(i * batch + j) % len(texts)] for j in range(batch)]
        for name, classifier in classifiers.items():
            start = time.perf_counter()
            classifier.predict_proba(chunk, batch_size=batch)
            runs[name].append(time.perf_counter() - start)
    return runs


def int8_accuracy(merged: TextClassifier, int8: TextClassifier, texts: list[str], labels: list[int]) -> dict:
    """Test accuracy of the merged model and of its int8 version (as `ft-plugin evaluate` computes it), and how
    often the two predict the same label."""
    predicted = {name: classifier.predict_proba(texts, batch_size=64).argmax(-1).tolist() for name, classifier in
                 (("merged", merged), ("merged int8", int8))}  # fmt: skip
    return {
        **{name: classification_metrics(labels_, labels)["accuracy"] for name, labels_ in predicted.items()},
        "agreement": statistics.mean(a == b for a, b in zip(predicted["merged"], predicted["merged int8"])),
        "texts": len(texts),
    }


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def latency_row(name: str, batch_size: int, runs: list[float]) -> dict:
    return {"model": name, "batch": batch_size, "p50_ms": 1000 * percentile(runs, 50),
            "p95_ms": 1000 * percentile(runs, 95), "texts_per_s": batch_size / statistics.median(runs)}  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", default=None, help="A LoRA result folder (default: train a small one).")
    parser.add_argument("--model_name_or_path", default=None, help="Base for the small LoRA run.")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--output", default="inference")
    parser.add_argument("--accuracy_samples", type=int, default=None, help="Test texts for the int8 accuracy check.")
    parser.add_argument("--no_space", action="store_true", help="Skip the Space /predict row.")
    parser.add_argument("--lora_flags", default="", help='Recipe flags for the small LoRA run, e.g. "--lora_r 16".')
    options = parser.parse_args(argv)
    adapter = options.adapter or run_fresh(
        train_small_lora, options.model_name_or_path, options.max_seq_length, options.lora_flags
    )
    test = load_data(DataArguments(max_predict_samples=options.accuracy_samples)).splits["test"]
    texts = test["text"][:500]

    unmerged = TextClassifier.from_pretrained(adapter, merge=False)
    merged = copy.copy(unmerged)
    merged.model = copy.deepcopy(unmerged.model).merge_and_unload()
    export_dir = tempfile.mkdtemp(prefix="bench-export-")
    merged.model.save_pretrained(export_dir)
    unmerged.tokenizer.save_pretrained(export_dir)
    from transformers import AutoModelForSequenceClassification

    exported = copy.copy(merged)
    exported.model = AutoModelForSequenceClassification.from_pretrained(export_dir).eval()
    with torch.inference_mode():  # the three must agree before their speed means anything
        batch = unmerged.tokenizer(texts[:8], padding=True, truncation=True, return_tensors="pt")
        reference = unmerged.model(**batch).logits
        for other in (merged, exported):
            torch.testing.assert_close(other.model(**batch).logits, reference, rtol=1e-3, atol=1e-4)

    int8 = copy.copy(merged)
    int8.model = quantize_int8(copy.deepcopy(merged.model))
    accuracy = int8_accuracy(merged, int8, test["text"][:], test["label"][:])

    classifiers = {"unmerged (PeftModel)": unmerged, "merged": merged, "exported merged": exported, "merged int8": int8}
    rows = []
    for batch_size in (1, 32):
        for name, runs in latencies(classifiers, texts, batch_size, options.repeats).items():
            rows.append(latency_row(name, batch_size, runs))
    if not options.no_space:
        rows.append(latency_row("Space /predict (gradio_client)", 1, space_latencies(adapter, texts, options.repeats)))
    for row in rows:
        unmerged_p50 = next(
            r["p50_ms"] for r in rows if r["model"].startswith("unmerged") and r["batch"] == row["batch"]
        )
        row["speedup_vs_unmerged"] = unmerged_p50 / row["p50_ms"]
    print(f"\nLatency over {options.repeats} calls, threads={torch.get_num_threads()}")
    print_table(rows, ["model", "batch", "p50_ms", "p95_ms", "texts_per_s", "speedup_vs_unmerged"])
    adapted = sorted({name.rsplit(".", 1)[-1] for name in unmerged.model.peft_config["default"].target_modules})
    print(f"LoRA r={unmerged.model.peft_config['default'].r} on {', '.join(adapted)}")
    print(f"Test accuracy on {accuracy['texts']} tweets: merged {accuracy['merged']:.4f}, merged int8 "
          f"{accuracy['merged int8']:.4f}; same label for {accuracy['agreement']:.2%} of them")  # fmt: skip
    payload = {"settings": vars(options), "lora_target_modules": adapted, "rows": rows, "accuracy": accuracy}
    path = write_json(options.output, payload)
    print(f"\nWrote {path}")
    return rows


if __name__ == "__main__":
    run_as_command(main)
