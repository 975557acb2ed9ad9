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

import importlib  # noqa: E402

from .errors import DataError, FtPluginError, MethodError, ModelError  # noqa: E402

# Imported on first use (PEP 562), so that `import ft_plugin.cli` or `ft_plugin.allocator` does not pull in torch
# before an entry point has chosen the memory allocator (ft_plugin/allocator.py).
_LAZY_ATTRIBUTES = {
    "METHODS": "methods",
    "MethodSpec": "methods",
    "apply_method": "methods",
    "apply": "methods",
    "register_method": "methods",
    "trainable_report": "methods",
    "load": "saving",
    "save_result": "saving",
}


def __getattr__(name: str):
    if name not in _LAZY_ATTRIBUTES:
        raise AttributeError(f"module 'ft_plugin' has no attribute '{name}'")
    module = importlib.import_module(f".{_LAZY_ATTRIBUTES[name]}", __name__)
    value = getattr(module, "apply_method" if name == "apply" else name)
    globals()[name] = value
    return value


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
