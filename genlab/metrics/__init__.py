"""Measures of a model on each use: likelihood (``likelihood``), anomaly detection
(``detection``), linear probes of features (``probe``). Each module's names are re-exported
here."""

from genlab.metrics.detection import (
    CORRUPTIONS,
    Detection,
    DetectionReport,
    aupr,
    auroc,
    corrupt,
    detect,
    fpr_at_tpr,
    ood_scores,
    plot_scores,
    typicality,
)
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
from genlab.metrics.probe import (
    ProbeReport,
    ProbeResult,
    features,
    fit_logistic,
    knn_accuracy,
    linear_probe,
    probe,
    standardize,
)

__all__ = ["CORRUPTIONS", "Detection", "DetectionReport", "NLLReport", "Progress", "aupr",
           "auroc", "bits_per_dim", "check_finite", "corrupt", "detect", "fpr_at_tpr",
           "log_probs", "method_of", "nll", "ood_scores", "plot_scores", "typicality",
           "validate", "ProbeReport", "ProbeResult", "features", "fit_logistic",
           "knn_accuracy", "linear_probe", "probe", "standardize"]
