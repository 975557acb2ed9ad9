"""ft-plugin: parameter-efficient fine-tuning of pretrained transformers for text classification.

import ft_plugin
model = ft_plugin.apply(model, "lora", r=16)         # any Trainer or Accelerate loop
trainer = ft_plugin.build_trainer(...)                # a plain transformers.Trainer
model = ft_plugin.load("outputs/lora")                # any result folder or Hub repo
"""

__version__ = "0.1.0"

import warnings

# peft calls a transformers property deprecated in v5; the warning is not actionable for our users.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

from .errors import DataError, FtPluginError, MethodError, ModelError  # noqa: E402
from .methods import METHODS, MethodSpec, apply_method, register_method, trainable_report  # noqa: E402
from .saving import load, save_result  # noqa: E402

apply = apply_method


def push(*args, **kwargs) -> str:
    """See `ft_plugin.hub.push_result` (imported lazily)."""
    from .hub import push_result

    return push_result(*args, **kwargs)


def build_trainer(*args, **kwargs):
    """See `ft_plugin.recipe.build_trainer` (imported lazily: it pulls in `transformers.Trainer`)."""
    from .recipe import build_trainer as _build_trainer

    return _build_trainer(*args, **kwargs)


__all__ = [
    "METHODS",
    "DataError",
    "FtPluginError",
    "MethodError",
    "MethodSpec",
    "ModelError",
    "apply",
    "apply_method",
    "build_trainer",
    "load",
    "push",
    "register_method",
    "save_result",
    "trainable_report",
]
