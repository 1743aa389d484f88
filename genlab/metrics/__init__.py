"""Measures of a model on each use: likelihood (``likelihood``), anomaly detection
(``detection``), sample quality (``samples``) on genlab's own feature networks (``features``),
linear probes of features (``probe``). Each module's names are re-exported here."""

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
    png_bits,
    typicality,
)
from genlab.metrics.features import FeatureNet, feature_net_for, load_feature_net
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
    fit_logistic,
    knn_accuracy,
    linear_probe,
    probe,
    standardize,
)
from genlab.metrics.samples import (
    SampleReport,
    classifier_score,
    fid,
    kid,
    parzen,
    precision_recall,
    reference_features,
    sample_quality,
)

# probe.features (encode a dataset) is not re-exported: the name is the features module's.
__all__ = ["CORRUPTIONS", "Detection", "DetectionReport", "NLLReport", "Progress", "aupr",
           "auroc", "bits_per_dim", "check_finite", "corrupt", "detect", "fpr_at_tpr",
           "log_probs", "method_of", "nll", "ood_scores", "plot_scores", "png_bits",
           "typicality",
           "validate", "ProbeReport", "ProbeResult", "fit_logistic", "knn_accuracy",
           "linear_probe", "probe", "standardize"]
__all__ += ["SampleReport", "classifier_score", "fid", "kid", "parzen", "precision_recall",
            "reference_features", "sample_quality"]
__all__ += ["FeatureNet", "feature_net_for", "load_feature_net"]
