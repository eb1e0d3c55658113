"""Small-scale reproductions of the seeds' claims about softmax and position variants (issue 8).

Library code of the recipes under ``recipes/experiments/``: the max-retrieval task, W8A8 fake quantization,
outlier and diversity metrics, a tiny language-model training loop and the results writer. Each recipe runs
several seeds per cell and writes a markdown + JSON table, a PNG plot and its exact configuration.
"""

from .metrics import distinct_n, entropy_from_logits, kurtosis, mean_spread
from .quantization import W8A8FakeQuantizer, fake_quantize_asymmetric, fake_quantize_symmetric
from .report import write_results

__all__ = [
    "W8A8FakeQuantizer",
    "distinct_n",
    "entropy_from_logits",
    "fake_quantize_asymmetric",
    "fake_quantize_symmetric",
    "kurtosis",
    "mean_spread",
    "write_results",
]
