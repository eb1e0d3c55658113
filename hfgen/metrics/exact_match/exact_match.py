"""Exact match of generated text (or token sequences written as text), as an ``evaluate`` metric module.

Shipped with hfgen because Hub metrics (``evaluate.load("exact_match")``) cannot be downloaded offline; same name,
inputs and output key as the Hub's module, with its ``ignore_case`` option. Load it with
``evaluate.load(path_to_this_folder)`` or ``hfgen.metrics.load_metric("exact_match")``. The file imports only
``datasets``, ``evaluate`` and ``numpy``, one import per line, as ``evaluate``'s module loader expects.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
exact_match = (1/N) sum_i [prediction_i == reference_i]: the share of predictions identical to their reference,
character for character (after lower-casing both with ignore_case).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): predicted texts.
    references (list of str): reference texts, one per prediction.
    ignore_case (bool, optional): compare lower-cased texts. Default False.
Returns:
    exact_match (float): in [0, 1].
Example:
    >>> metric = evaluate.load("hfgen/metrics/exact_match")
    >>> metric.compute(predictions=["a cat", "a dog"], references=["a cat", "a bird"])["exact_match"]
    0.5
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    """Share of predictions equal to their reference."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, ignore_case=False):
        if len(predictions) == 0:
            raise ValueError("exact_match needs at least one prediction.")
        predictions = np.asarray(predictions, dtype=object)
        references = np.asarray(references, dtype=object)
        if ignore_case:
            predictions = np.asarray([p.lower() for p in predictions], dtype=object)
            references = np.asarray([r.lower() for r in references], dtype=object)
        return {"exact_match": float(np.mean(predictions == references))}
