"""Evaluation with `evaluate`: accuracy and macro-F1 from metric modules shipped in the package.

`evaluate.load("accuracy")` fetches its script from the Hub; the same modules ship here under
`ft_plugin/metric_modules/`, loaded with `evaluate.load(<local folder>)`, so evaluation works offline with
`evaluate`'s own API and outputs.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

METRIC_MODULES = Path(__file__).parent / "metric_modules"


@cache
def load_metric(name: str):
    """`evaluate.load` of a shipped metric module (`accuracy` or `f1`)."""
    import evaluate

    return evaluate.load(str(METRIC_MODULES / name))


def classification_metrics(predictions, references) -> dict[str, float]:
    """Accuracy and macro-F1 of integer predictions."""
    accuracy = load_metric("accuracy").compute(predictions=predictions, references=references)["accuracy"]
    f1 = load_metric("f1").compute(predictions=predictions, references=references, average="macro")["f1"]
    return {"accuracy": float(accuracy), "f1_macro": float(f1)}


def compute_metrics(eval_prediction) -> dict[str, float]:
    """`Trainer(compute_metrics=...)`: argmax of the logits against the labels."""
    logits = eval_prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    return classification_metrics(np.argmax(logits, axis=-1), eval_prediction.label_ids)
