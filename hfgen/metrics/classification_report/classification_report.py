"""Accuracy and macro-averaged F1 of single-label classification, as an ``evaluate`` metric module.

Shipped with hfgen because Hub metrics (``evaluate.load("accuracy")``) cannot be downloaded offline; load it with
``evaluate.load(path_to_this_folder)`` or ``hfgen.metrics.load_metric()``. The file imports only ``datasets``,
``evaluate`` and ``numpy``, one import per line, as ``evaluate``'s module loader expects.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
accuracy = (1/N) sum_i [prediction_i == reference_i].
macro_f1 = mean over classes c of F1_c, F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c); the classes are those present in
predictions or references (or range(num_labels) when given), and a class with 2 TP + FP + FN = 0 counts as F1 = 0.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    num_labels (int, optional): macro-average over classes 0..num_labels-1 (absent classes count as F1 = 0);
        default: the classes that occur.
Returns:
    accuracy (float), macro_f1 (float), per_class_f1 (list of float, by class id in the averaged set).
Example:
    >>> metric = evaluate.load("hfgen/metrics/classification_report")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])["accuracy"]
    0.6666666666666666
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClassificationReport(evaluate.Metric):
    """Accuracy and macro-F1 of class-id predictions."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_labels=None):
        predictions = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        if len(predictions) == 0:
            raise ValueError("classification_report needs at least one prediction.")
        if num_labels is None:
            classes = np.union1d(predictions, references)
        else:
            if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
                raise ValueError(f"num_labels must be a positive int, got {num_labels!r}.")
            outside = np.union1d(predictions, references)
            outside = outside[(outside < 0) | (outside >= num_labels)]
            if len(outside):
                raise ValueError(f"class ids must lie in [0, {num_labels}) (num_labels), got {outside.tolist()}.")
            classes = np.arange(num_labels)
        per_class = []
        for c in classes:
            tp = int(np.sum((predictions == c) & (references == c)))
            fp = int(np.sum((predictions == c) & (references != c)))
            fn = int(np.sum((predictions != c) & (references == c)))
            denominator = 2 * tp + fp + fn
            per_class.append(2 * tp / denominator if denominator else 0.0)
        return {"accuracy": float(np.mean(predictions == references)),
                "macro_f1": float(np.mean(per_class)),
                "per_class_f1": per_class}
