"""Measures of a model on each use: likelihood (``likelihood``), anomaly detection
(``detection``). Each module's names are re-exported here."""

from genlab.metrics.detection import auroc
from genlab.metrics.likelihood import (
    NLLReport,
    Progress,
    bits_per_dim,
    check_finite,
    log_probs,
    method_of,
    nll,
    validate,
)

__all__ = ["NLLReport", "Progress", "auroc", "bits_per_dim", "check_finite", "log_probs",
           "method_of", "nll", "validate"]
