"""Delta methods. Importing this package registers every built-in method in `METHODS`, in this order."""

# ruff: noqa: I001  (import order is registration order, which is the order users see)
from . import full, peft_tuners, adapter, intrinsic_prompt  # noqa: F401
from .compose import apply_method, count_parameters, head_parameter_names, trainable_report
from .registry import METHODS, MethodSpec, parse_method, register_method

__all__ = [
    "METHODS",
    "MethodSpec",
    "apply_method",
    "count_parameters",
    "head_parameter_names",
    "parse_method",
    "register_method",
    "trainable_report",
]
