"""F1 as an `evaluate` module, shipped with ft-plugin so `evaluate.load` works offline.

Same name, inputs and output as the Hub's `evaluate-metric/f1` (scikit-learn's `f1_score`).
"""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = "F1: the harmonic mean of precision and recall, per class or averaged."
_CITATION = ""
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): ground-truth labels.
    average (`str`): 'binary' (default), 'micro', 'macro', 'weighted' or None.
    labels, pos_label, sample_weight: as in `sklearn.metrics.f1_score`.
Returns:
    f1 (`float` or `list` of `float`)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None):
        score = f1_score(
            references, predictions, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight
        )
        return {"f1": score.tolist() if hasattr(score, "tolist") and score.ndim else float(score)}
