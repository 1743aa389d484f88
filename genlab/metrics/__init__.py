"""Measures of a model on each use: likelihood (``likelihood``), anomaly detection
(``detection``), sample quality (``samples``). Each module's names are re-exported here."""

from genlab.metrics.detection import auroc
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

__all__ = ["NLLReport", "Progress", "auroc", "bits_per_dim", "check_finite", "log_probs",
           "method_of", "nll", "validate"]
__all__ += ["SampleReport", "classifier_score", "fid", "kid", "parzen", "precision_recall",
            "reference_features", "sample_quality"]
__all__ += ["FeatureNet", "feature_net_for", "load_feature_net"]
