"""Training throughput for 1, 2, ... processes, each launched with `accelerate launch` and a shipped config.

Weak scaling: the per-device batch is fixed, so the global batch grows with the processes. Each run trains the
recipe for `--steps` optimizer steps on the embedded dataset and reads the Trainer's own `train_results.json`.

    python bench/scaling.py                              # CPU: cpu.yaml (1 process), cpu_ddp.yaml (2 processes)
    python bench/scaling.py --device cuda --processes 1 2 4 8   # GPUs: single_gpu.yaml, multi_gpu.yaml

Prints a table and writes bench/results/scaling-<device>-<time>.json (hardware, command lines, figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (device, one process?) -> the shipped Accelerate config; --num_processes overrides its process count
CONFIGS = {
    ("cpu", True): "accelerate_configs/cpu.yaml",
    ("cpu", False): "accelerate_configs/cpu_ddp.yaml",
    ("cuda", True): "accelerate_configs/single_gpu.yaml",
    ("cuda", False): "accelerate_configs/multi_gpu.yaml",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--method", default="lora", help="a recipe in recipes/<method>_bert.py")
    parser.add_argument("--model", default="minilm-l6", help="--model_name_or_path (default: the embedded MiniLM-L6)")
    parser.add_argument("--per_device_batch", type=int, default=16)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--results_dir", default=str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--memory", action="store_true", help="Also measure rank 0's training memory, in a separate untimed run."
    )
    return parser.parse_args(argv)


def launch_command(args: argparse.Namespace, processes: int, output_dir: str, memory: bool = False) -> list[str]:
    accelerate = shutil.which("accelerate") or "accelerate"
    config = CONFIGS[args.device, processes == 1]
    return [
        accelerate, "launch", "--config_file", config, "--num_processes", str(processes),
        f"recipes/{args.method}_bert.py", "--model_name_or_path", args.model, "--output_dir", output_dir,
        "--max_steps", str(args.steps), "--per_device_train_batch_size", str(args.per_device_batch),
        "--max_seq_length", str(args.max_seq_length), "--max_train_samples", str(args.steps * args.per_device_batch * processes),
        "--max_eval_samples", "64", "--max_predict_samples", "64", "--eval_strategy", "no", "--save_strategy", "no",
        "--load_best_model_at_end", "false", "--logging_steps", str(args.steps), "--skip_memory_metrics", str(not memory).lower(),
        "--train_sampling_strategy", "random",
    ]  # fmt: skip


def train(args: argparse.Namespace, processes: int, env: dict, memory: bool) -> tuple[dict, list[str], float]:
    """One launch; the Trainer's train metrics, the command and the wall time."""
    with tempfile.TemporaryDirectory() as output_dir:
        command = launch_command(args, processes, output_dir, memory)
        started = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"{processes} process(es) failed:\n{result.stderr[-3000:]}")
        return json.loads((Path(output_dir) / "train_results.json").read_text()), command, wall


def run_one(args: argparse.Namespace, processes: int) -> dict:
    """Train once with `processes` processes for the speed; with `--memory`, once more for rank 0's memory.

    The memory is never measured in the timed run: transformers' memory tracker (`--skip_memory_metrics false`)
    polls the resident memory in a loop without sleeping, a thread that takes a whole core of the machine.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if args.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))  # every run uses all the cores
    load_before = os.getloadavg()[0]  # other work on the machine skews the figures: record it
    metrics, command, wall = train(args, processes, env, memory=False)
    tracked = train(args, processes, env, memory=True)[0] if args.memory else {}
    return {
        "processes": processes,
        "global_batch": processes * args.per_device_batch,
        "threads_per_process": env.get("OMP_NUM_THREADS"),
        "train_seconds": metrics["train_runtime"],
        "samples_per_second": metrics["train_samples_per_second"],
        "launch_wall_seconds": round(wall, 2),
        "load_average_1m_before": round(load_before, 1),
        "train_peak_mib_rank0": _peak_mib(tracked, args.device),
        "samples_per_second_memory_tracked": tracked.get("train_samples_per_second"),  # to show the tracker's cost
        "command": " ".join(command),
    }


def _peak_mib(metrics: dict, device: str) -> float | None:
    """The Trainer's memory tracker (main process only): peak memory during training above its start, in MiB."""
    kind = "gpu" if device == "cuda" else "cpu"
    if f"train_mem_{kind}_peaked_delta" not in metrics:
        return None
    return round((metrics[f"train_mem_{kind}_alloc_delta"] + metrics[f"train_mem_{kind}_peaked_delta"]) / 2**20, 1)


def hardware(device: str) -> dict:
    import torch

    info = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__}
    if device == "cuda" and torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def table(rows: list[dict]) -> str:
    base = rows[0]["samples_per_second"] / rows[0]["processes"]
    lines = [
        "| processes | global batch | train s | samples/s | speedup | efficiency | train peak MiB (rank 0) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        speedup = row["samples_per_second"] / base
        lines.append(
            f"| {row['processes']} | {row['global_batch']} | {row['train_seconds']:.2f} | "
            f"{row['samples_per_second']:.1f} | {speedup:.2f}x | {speedup / row['processes']:.0%} | "
            f"{row['train_peak_mib_rank0']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = [run_one(args, processes) for processes in args.processes]
    report = {"settings": vars(args), "hardware": hardware(args.device), "rows": rows}
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"scaling-{args.device}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
