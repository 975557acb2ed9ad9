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
# before an entry point has chosen the memory allocator (ft_plugin/allocator.py): name -> (module, attribute).
_LAZY_ATTRIBUTES = {
    "METHODS": ("methods", "METHODS"),
    "MethodSpec": ("methods", "MethodSpec"),
    "apply": ("methods", "apply_method"),
    "apply_method": ("methods", "apply_method"),
    "register_method": ("methods", "register_method"),
    "trainable_report": ("methods", "trainable_report"),
    "load": ("saving", "load"),
    "save_result": ("saving", "save_result"),
}


def __getattr__(name: str):
    """The public names above, imported when first used."""
    if name not in _LAZY_ATTRIBUTES:
        raise AttributeError(f"module 'ft_plugin' has no attribute '{name}'")
    module, attribute = _LAZY_ATTRIBUTES[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_ATTRIBUTES})


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
