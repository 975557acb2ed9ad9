"""Pre-flight checks for multi-process runs: stop a launch that cannot work before any model is loaded.

Accelerate (`accelerate launch`) or torchrun start the processes; ft-plugin never launches anything itself.
These checks read what the launcher set (environment variables), the machine (GPUs, installed packages) and,
on demand, an Accelerate config file, and fail with one line naming the fix.

Check a config before launching it:

    python -m ft_plugin.distributed accelerate_configs/multi_gpu.yaml
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass

from .errors import FtPluginError

logger = logging.getLogger("ft_plugin")

CPU_CONFIGS = "accelerate_configs/cpu.yaml (1 process) or accelerate_configs/cpu_ddp.yaml (2 processes)"
# Accelerate config types that only run on accelerators; MULTI_GPU with `use_cpu: true` runs on CPUs (gloo).
GPU_ONLY_TYPES = {"FSDP", "DEEPSPEED", "MEGATRON_LM"}
GPU_MIXED_PRECISION = {"fp16", "bf16", "fp8"}


class LaunchError(FtPluginError, RuntimeError):
    """A launch configuration that does not fit this machine or this dataset."""


def is_main_process(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether this process speaks to the user: the only one, or the first of its machine in a launch (`LOCAL_RANK`,
    set by `accelerate launch` and `torchrun`; one line per machine, whose files and disk may differ). The other
    processes of a machine load the same data and fail the same way."""
    environ = os.environ if environ is None else environ
    return environ.get("LOCAL_RANK", environ.get("RANK", "0")) == "0"


def accelerator_count() -> int:
    """How many accelerators (CUDA, XPU, ...) torch sees on this machine."""
    import torch

    if hasattr(torch, "accelerator"):
        return torch.accelerator.device_count() if torch.accelerator.is_available() else 0
    return torch.cuda.device_count()


def is_installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _flag(value: str | None) -> bool | None:
    return None if value is None else value.strip().lower() in {"1", "true", "yes"}


@dataclass(frozen=True)
class LaunchEnvironment:
    """What the launcher told this process, read from the variables accelerate and torchrun set."""

    world_size: int = 1
    launched_by_accelerate: bool = False  # `accelerate launch` always sets ACCELERATE_MIXED_PRECISION
    use_cpu: bool | None = None  # ACCELERATE_USE_CPU: True/False from accelerate's simple launcher, else unset
    mixed_precision: str = "no"
    use_deepspeed: bool = False
    use_fsdp: bool = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> LaunchEnvironment:
        env = os.environ if environ is None else environ
        return cls(
            world_size=int(env.get("WORLD_SIZE", "1")),
            launched_by_accelerate="ACCELERATE_MIXED_PRECISION" in env,
            use_cpu=_flag(env.get("ACCELERATE_USE_CPU")),
            mixed_precision=env.get("ACCELERATE_MIXED_PRECISION", "no").lower(),
            use_deepspeed=bool(_flag(env.get("ACCELERATE_USE_DEEPSPEED"))),
            use_fsdp=bool(_flag(env.get("ACCELERATE_USE_FSDP"))),
        )

    @property
    def asks_for_gpus(self) -> str | None:
        """Why the launch needs accelerators (a config with FSDP, DeepSpeed or fp16/bf16 off the CPU), else None."""
        if not self.launched_by_accelerate or self.use_cpu:
            return None
        if self.use_fsdp or self.use_deepspeed:
            return "FSDP" if self.use_fsdp else "DeepSpeed"
        if self.mixed_precision in GPU_MIXED_PRECISION:
            return f"mixed_precision {self.mixed_precision} on GPUs"
        return None


def check_launch(argv: list[str], environ: MutableMapping[str, str] | None = None) -> LaunchEnvironment:
    """Run in each process before `TrainingArguments` picks a device; may set `ACCELERATE_USE_CPU`.

    - DeepSpeed asked for (`--deepspeed` or a DeepSpeed Accelerate config) but not installed: error.
    - A GPU config (FSDP, DeepSpeed, fp16/bf16 mixed precision) on a machine without GPUs: error.
    - Several processes (torchrun, or a `use_cpu` multi-process Accelerate config) on a machine without GPUs:
      sets `ACCELERATE_USE_CPU=true`, as `accelerate launch --cpu` does, so accelerate picks DDP over gloo.
      Without it each process would train alone on the whole dataset and all would write the output folder.
    """
    env = os.environ if environ is None else environ
    launch = LaunchEnvironment.from_environ(env)
    if (launch.use_deepspeed or "--deepspeed" in argv) and not is_installed("deepspeed"):
        raise LaunchError("DeepSpeed is asked for but not installed: run `pip install 'ft-plugin[deepspeed]'`.")
    if accelerator_count() > 0:
        return launch
    reason = launch.asks_for_gpus
    if reason:
        raise LaunchError(
            f"The Accelerate config asks for GPUs ({reason}) but this machine has none: "
            f"launch with {CPU_CONFIGS}, or add --cpu to `accelerate launch`."
        )
    if launch.world_size > 1 and launch.use_cpu is not True:
        env["ACCELERATE_USE_CPU"] = "true"
        logger.info("No GPU found: %d processes train with DDP over gloo on the CPU.", launch.world_size)
    return launch


def check_batches(train_size: int, per_device_batch_size: int, world_size: int) -> None:
    """Every process needs at least one real batch of training data per epoch."""
    batches = math.ceil(train_size / per_device_batch_size)
    if world_size > batches:
        raise LaunchError(
            f"The train split has {train_size} examples, {batches} batch(es) of {per_device_batch_size}, fewer than "
            f"the {world_size} processes: launch at most {batches} process(es) or lower --per_device_train_batch_size "
            f"to {max(1, train_size // world_size)} or less."
        )


def check_accelerate_config(path: str, gpus: int | None = None) -> str:
    """Check an Accelerate config file against this machine; returns a one-line summary, raises `LaunchError`."""
    from accelerate.commands.config.config_args import load_config_from_file

    if not os.path.isfile(path):
        raise LaunchError(f"Accelerate config '{path}' does not exist: pick one in accelerate_configs/.")
    config = load_config_from_file(path)
    kind = str(config.distributed_type).split(".")[-1]
    gpus = accelerator_count() if gpus is None else gpus
    per_machine = max(1, config.num_processes // max(1, config.num_machines))
    if kind == "DEEPSPEED" and not is_installed("deepspeed"):
        raise LaunchError(f"'{path}' uses DeepSpeed, which is not installed: run `pip install 'ft-plugin[deepspeed]'`.")
    multi_device = kind.startswith("MULTI_") and kind != "MULTI_CPU"
    needs_gpu = not config.use_cpu and (kind in GPU_ONLY_TYPES or multi_device or config.gpu_ids not in (None, "all"))
    if needs_gpu and gpus == 0:
        reason = kind if kind != "NO" else f"gpu_ids {config.gpu_ids}"
        raise LaunchError(f"'{path}' asks for GPUs ({reason}) but this machine has none: use {CPU_CONFIGS}.")
    if needs_gpu and per_machine > gpus:
        raise LaunchError(
            f"'{path}' starts {per_machine} processes per machine but this machine has {gpus} GPU(s): "
            f"add --num_processes {gpus * max(1, config.num_machines)} to `accelerate launch`."
        )
    return f"{path}: {kind}, {config.num_processes} process(es) on {config.num_machines} machine(s), fits this machine"


def main(argv: list[str] | None = None) -> None:
    """`python -m ft_plugin.distributed CONFIG...`: check Accelerate configs against this machine."""
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: python -m ft_plugin.distributed ACCELERATE_CONFIG.yaml...", file=sys.stderr)
        raise SystemExit(2)
    try:
        for path in paths:
            print(check_accelerate_config(path))
    except FtPluginError as error:
        print(f"ft-plugin: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
