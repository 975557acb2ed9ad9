"""Training jobs in a child process: live progress, loss and accuracy, cancel, one job at a time.

What the Space (or a notebook) uses to train without blocking its UI::

    runner = JobRunner()
    job = runner.submit(TrainingJob({"method": "lora", "max_train_samples": 500, "output_dir": "out/lora"}))
    while job.is_alive(): print(job.progress, job.history[-1:]); time.sleep(1)
    job.cancel()        # stops after the current step; the model trained so far is evaluated and saved

A job is the recipe's own code (`recipe.parse_args` -> `build_trainer` -> `train_and_save`) with a callback
that reports the Trainer's logs and stops it on request, so a job's result folder is an ordinary result.
It runs in a process of its own (started from a forkserver that has imported the recipe once): the app that
submitted it keeps its interpreter (no GIL shared with a Python-bound training loop, so a Space answers
/predict calls at full speed), a crash or an out-of-memory kill ends the job, not the app, and the job can
run at a lower CPU priority (`niceness`) than the app's requests. The job object in the app is updated from
the child's reports by a watcher thread.
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import torch
from transformers import TrainerCallback

from .errors import FtPluginError, MethodError, first_line
from .memory import PeakRSS

logger = logging.getLogger(__name__)

# Job states; `is_alive()` is True for the first two.
QUEUED, RUNNING, FINISHED, CANCELLED, FAILED = "queued", "running", "finished", "cancelled", "failed"


def options_to_argv(options: dict[str, Any]) -> list[str]:
    """`{"lora_r": 8, "target_modules": ["query", "value"]}` -> `["--lora_r=8", "--target_modules", ...]`.

    The options are the recipe's flags (the CLI and YAML configs use the same names); None means "default". A single
    value is written as `--key=value`, so it stays that flag's value whatever it holds (never another flag).
    """
    argv: list[str] = []
    for key, value in options.items():
        if value is None or value == "":
            continue
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv.append(f"--{key}={value}")
    return argv


@dataclass
class TrainingJob:
    """One training run, configured by recipe flags, observable while it runs in a background thread.

    Args:
        options: recipe flags as a mapping (`method`, `model_name_or_path`, `train_file`, `lora_r`,
            `num_train_epochs`, `output_dir`...), parsed and validated at once by `recipe.parse_args`.
        max_minutes: stop training after this many minutes (the model trained so far is kept), None: no limit.
        name: a label for tables and dropdowns (default: the output folder's name).
        owner: who submitted the job (e.g. a Space session), so that apps can show each user only their runs.
        niceness: added to the training process's CPU niceness (Unix; 0: same priority as the app), so that an
            app's interactive requests are served first when the cores are busy. Training results do not change.
        threads: torch's intra-op threads in the training process (None: torch's default, one per core), e.g.
            half the cores, leaving the rest to the app.
        hub_login: whether the job's Hub downloads may use this machine's Hub login (`HF_TOKEN`, `hf auth
            login`); False: anonymous, for jobs a Space's visitors submit (the owner's private models stay private).
    """

    options: dict[str, Any]
    max_minutes: float | None = None
    name: str | None = None
    owner: str | None = None
    niceness: int = 0
    threads: int | None = None
    hub_login: bool = True
    state: str = field(default=QUEUED, init=False)
    step: int = field(default=0, init=False)
    max_steps: int = field(default=0, init=False)
    history: list[dict[str, float]] = field(default_factory=list, init=False)
    metrics: dict[str, float] = field(default_factory=dict, init=False)
    error: str | None = field(default=None, init=False)
    stop_reason: str | None = field(default=None, init=False)
    phase: str = field(default="waiting", init=False)
    peak_memory_mb: float = field(default=0.0, init=False)
    started_at: float | None = field(default=None, init=False)
    ended_at: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.max_minutes is not None and not 0 < self.max_minutes < math.inf:  # NaN too
            raise MethodError(f"max_minutes must be a positive number, got {self.max_minutes}.")
        if not self.options.get("output_dir"):
            raise MethodError("A training job needs an 'output_dir' option: the folder its result is saved in.")
        self.method = str(self.options.get("method") or "lora")
        self.output_dir = Path(self.options["output_dir"])
        self.name = self.name or self.output_dir.name
        self.arguments: tuple | None = None
        self._resume: str | bool | None = None
        self._cancel = _CONTEXT.Event()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._watcher: threading.Thread | None = None

    def prepare(self) -> None:
        """Parse and check the options (the recipe's `parse_args`); errors are raised here, in the caller, before
        any process starts. The child parses the same options again (they are what it receives)."""
        from .recipe import check_output_dir, parse_args

        try:
            self.arguments = parse_args(options_to_argv(self.options))
        except FtPluginError:
            raise
        except ValueError as error:  # HfArgumentParser: unknown flags; dataclasses: bad values
            raise MethodError(f"Invalid training options: {error}. The options are the recipe's flags.") from None
        model_args, _, _, training_args = self.arguments
        # as the recipe does: never overwrite a result without overwrite_output_dir, resume a checkpoint left there
        self._resume = check_output_dir(training_args, model_args.overwrite_output_dir)

    # -- control ---------------------------------------------------------------------------------------------
    def start(self) -> TrainingJob:
        """Start the training process and the thread that follows its reports; returns at once."""
        if self.arguments is None:
            self.prepare()
        reports, child_end = _CONTEXT.Pipe(duplex=False)
        self._process = _CONTEXT.Process(
            target=_run_job,
            args=(self.options, self._resume, self.max_minutes, self.niceness, self.threads, child_end, self._cancel),
            kwargs={"parent_pid": os.getpid(), "hub_login": self.hub_login},
            name=f"ft-plugin-job-{self.name}",
        )
        self.state = RUNNING
        self.started_at = time.time()
        self._process.start()
        child_end.close()  # the child holds the only writer now: its end (exit or kill) ends the reports
        _LIVE_PROCESSES.add(self._process)
        self._watcher = threading.Thread(target=self._follow, args=(reports,), name=f"{self._process.name}-watch")
        self._watcher.daemon = True
        self._watcher.start()
        return self

    def cancel(self) -> None:
        """Stop after the current optimizer step; the model trained so far is still evaluated and saved."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends (or `timeout` seconds). True if it has ended."""
        if self._watcher is not None:
            self._watcher.join(timeout)
        return not self.is_alive()

    def is_alive(self) -> bool:
        return self.state in (QUEUED, RUNNING)

    # -- observation -----------------------------------------------------------------------------------------
    @property
    def progress(self) -> float:
        """Share of the optimizer steps done, in [0, 1]."""
        return min(1.0, self.step / self.max_steps) if self.max_steps else 0.0

    @property
    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.ended_at or time.time()) - self.started_at

    @property
    def has_result(self) -> bool:
        """True once a result folder was saved (finished, or cancelled after training started)."""
        return (self.output_dir / "ft_plugin_config.json").is_file() and not self.is_alive()

    def summary(self) -> dict[str, Any]:
        """One row for a comparison table."""
        return {
            "run": self.name,
            "method": self.method,
            "base model": self.options.get("model_name_or_path") or "minilm-l6",
            "state": self.state,
            "steps": self.step,
            "accuracy": self.metrics.get("test_accuracy", self.metrics.get("eval_accuracy")),
            "f1 (macro)": self.metrics.get("test_f1_macro", self.metrics.get("eval_f1_macro")),
            "trainable params": self.metrics.get("trainable_params"),
            "train seconds": round(self.metrics.get("train_runtime", self.elapsed), 1),
            "peak memory (MB)": round(self.peak_memory_mb),
            "output_dir": str(self.output_dir),
        }

    # -- the work (in the child process) and its reports (in this one) ---------------------------------------
    def _follow(self, reports: Connection) -> None:
        """Apply the child's reports until it ends; a child that dies without a last word failed."""
        try:
            while True:
                try:
                    report = reports.recv()
                except EOFError:  # the child exited (or was killed) and every report was read
                    break
                if "log" in report:
                    self.history.append(report["log"])
                for key in _REPORTED & report.keys():
                    setattr(self, key, report[key])
        finally:
            reports.close()
            self._process.join()
            _LIVE_PROCESSES.discard(self._process)
            if self.state == RUNNING:
                self.error = f"the training process ended unexpectedly (exit code {self._process.exitcode})"
                logger.error("Training job %s: %s", self.name, self.error)
                self.state = FAILED
            self.phase = self.state
            self.ended_at = time.time()


# What a child may report; anything else it sends is ignored.
_REPORTED = {"state", "step", "max_steps", "metrics", "error", "stop_reason", "phase", "peak_memory_mb"}


def _run_job(
    options: dict[str, Any],
    resume: str | bool | None,
    max_minutes: float | None,
    niceness: int,
    threads: int | None,
    reports: Connection,
    cancel: Any,
    parent_pid: int,
    hub_login: bool = True,
) -> None:
    """The training process: the recipe's code, reporting progress through `reports` until a final state. It ends
    with the app that started it (checkpoints already written stay, for a resume)."""
    from huggingface_hub import constants

    from .recipe import build_trainer, parse_args, train_and_save

    constants.HF_HUB_DISABLE_IMPLICIT_TOKEN = not hub_login  # True: downloads send no token unless given one

    started = time.time()
    exit_with_parent(parent_pid)
    if niceness and hasattr(os, "nice"):
        os.nice(niceness)
    if threads:
        torch.set_num_threads(threads)
    try:
        reports.send({"phase": "loading data and model"})
        arguments = parse_args(options_to_argv(options))
        callback = JobCallback(reports.send, cancel, max_minutes, started)
        trainer = build_trainer(*arguments, callbacks=[callback])
        if cancel.is_set():  # cancelled while the data and model were loading: nothing to keep
            reports.send({"stop_reason": "cancelled before training started", "state": CANCELLED})
            return
        metrics = train_and_save(trainer, resume)
        reports.send({"metrics": metrics, "state": CANCELLED if cancel.is_set() else FINISHED})
    except Exception as error:  # the app shows the error; the log has the traceback
        logger.exception("Training job in %s failed", options.get("output_dir"))
        message = first_line(error)
        reports.send({"error": message, "state": FAILED})
    finally:
        reports.close()


class JobCallback(TrainerCallback):
    """Reports steps, logged loss/accuracy and peak memory through `report`; stops on cancel or time limit."""

    def __init__(self, report: Any, cancel: Any, max_minutes: float | None, started: float) -> None:
        self.report, self.cancel, self.max_minutes, self.started = report, cancel, max_minutes, started
        # GPU: peak allocated memory; CPU: the peak resident memory added since the job began, sampled every 20 ms
        # (read at step ends only, it would miss the activations, which are freed by then).
        self.rss = None if torch.cuda.is_available() else PeakRSS().start()
        self.baseline_rss = self.rss.peak if self.rss else 0
        self.peak_memory_mb = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.report({"max_steps": state.max_steps, "phase": "training"})

    def on_train_end(self, args, state, control, **kwargs):
        if self.rss is not None:
            self.rss.stop()
        self.report({"phase": "evaluating and saving"})

    def stop_reason(self, step: int) -> str | None:
        """Why training must stop now (Cancel, or the time limit), or None."""
        if self.cancel.is_set():
            return f"cancelled at step {step}"
        if self.max_minutes is not None and time.time() - self.started > 60 * self.max_minutes:
            return f"time limit of {self.max_minutes:g} min reached at step {step}"
        return None

    def on_substep_end(self, args, state, control, **kwargs):
        """Inside gradient accumulation too: Cancel and the time limit never wait for a long optimizer step."""
        reason = self.stop_reason(state.global_step)
        if reason:
            control.should_training_stop = True
            self.report({"stop_reason": reason})

    def on_step_end(self, args, state, control, **kwargs):
        memory = self.rss.peak - self.baseline_rss if self.rss else torch.cuda.max_memory_allocated()
        self.peak_memory_mb = max(self.peak_memory_mb, memory / 2**20)
        report = {"step": state.global_step, "peak_memory_mb": self.peak_memory_mb}
        reason = self.stop_reason(state.global_step)
        if reason:
            report["stop_reason"] = reason
            control.should_training_stop = True
        self.report(report)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            numbers = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
            self.report({"log": {"step": state.global_step, **numbers}})


def exit_with_parent(parent_pid: int, interval: float = 1.0) -> None:
    """In a child process: end it within `interval` seconds of the process `parent_pid` ending, even when that
    one was killed and its atexit clean-up never ran. Started from a forkserver, a child's own parent is the
    server, not the process that asked for it, so the child watches that one by pid; psutil's `is_running` also
    compares start times, so a reused pid is not mistaken for it."""
    parent = psutil.Process(parent_pid)

    def watch() -> None:
        while True:
            try:
                if not parent.is_running() or parent.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(interval)
        logger.warning("The process that started this one (pid %d) has ended: exiting.", parent_pid)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def preloaded_context() -> multiprocessing.context.BaseContext:
    """Forkserver (Unix) with the recipe imported once, so a job starts in a moment; spawn elsewhere. Never a
    plain fork: the app has threads (a web server, torch's pools) that a forked child would inherit half-way.
    The benchmarks start their fresh measuring processes from it too."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["ft_plugin.recipe"])
    return context


_CONTEXT = preloaded_context()
_LIVE_PROCESSES: set = set()


@atexit.register
def _stop_live_jobs() -> None:
    """An app that exits takes its training processes with it (they are not daemons: a job may start
    DataLoader workers)."""
    for process in list(_LIVE_PROCESSES):
        process.terminate()
        process.join(5)


class JobRunner:
    """Runs one `TrainingJob` at a time and remembers every job it ran (for comparison tables)."""

    def __init__(self) -> None:
        self.jobs: list[TrainingJob] = []
        self._lock = threading.Lock()

    @property
    def current(self) -> TrainingJob | None:
        """The job still running, if any."""
        return next((job for job in self.jobs if job.is_alive()), None)

    def submit(self, job: TrainingJob) -> TrainingJob:
        """Start `job`; raises if another job is still running (cancel it or wait for it first)."""
        with self._lock:
            running = self.current
            if running is not None:
                raise FtPluginError(
                    f"Training job '{running.name}' is still running: wait for it to finish or cancel it first."
                )
            if any(job.output_dir.resolve() == other.output_dir.resolve() for other in self.jobs):
                raise FtPluginError(f"Output folder '{job.output_dir}' is used by another run: choose a new one.")
            job.prepare()  # only now: no other job is training (see `TrainingJob.prepare`)
            self.jobs.append(job)
            return job.start()

    def get(self, name: str, owner: str | None = None) -> TrainingJob:
        """The job called `name` (among `owner`'s jobs when an owner is given)."""
        jobs = self.owned_by(owner) if owner is not None else self.jobs
        for job in jobs:
            if job.name == name:
                return job
        raise FtPluginError(f"No training run named '{name}': the runs are {[job.name for job in jobs]}.")

    def owned_by(self, owner: str) -> list[TrainingJob]:
        """The jobs submitted by `owner`, oldest first."""
        return [job for job in self.jobs if job.owner == owner]
