"""Naming clusters after labels: the paper's head rule, the majority rule, their errors, and
the report for any model with ``cluster`` (the Hungarian matching: tests/test_infogan.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny, tiny_batch

import genlab
from genlab.data import Dataset
from genlab.metrics.clustering import (
    check_clusters,
    cluster_report,
    head_labels,
    labelled_error,
    majority_labels,
)

# Five examples, three clusters, labels 0/1: cluster 0 claims examples 0, 1, 4; cluster 1
# claims 2; cluster 2 claims none, though example 3 is more its than any other example is.
PROBS = torch.tensor([[0.9, 0.1, 0.0],
                      [0.6, 0.3, 0.1],
                      [0.2, 0.7, 0.1],
                      [0.5, 0.1, 0.4],
                      [0.7, 0.0, 0.3]])
LABELS = torch.tensor([1, 0, 0, 1, 0])


def test_the_head_rule_names_each_cluster_after_its_most_probable_example():
    # Heads: cluster 0 -> example 0 (label 1), 1 -> example 2 (0), 2 -> example 3 (1).
    assert head_labels(PROBS, LABELS).tolist() == [1, 0, 1]
    # A tie goes to the first example: both examples give cluster 0 probability 1.
    tied = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert head_labels(tied, torch.tensor([4, 2, 3])).tolist() == [4, 3]


def test_the_majority_rule_counts_the_examples_a_cluster_claims():
    # Cluster 0 claims labels 1, 0, 0 -> 0; cluster 1 claims 0; cluster 2 none: its head's 1.
    assert majority_labels(PROBS, LABELS).tolist() == [0, 0, 1]
    # A tie (one 1, one 3) goes to the smaller label; more classes than labels seen is fine.
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert majority_labels(probs, torch.tensor([3, 1, 2]), n_classes=6).tolist() == [1, 2]


def test_the_error_of_named_clusters_counts_examples_against_their_names():
    # Argmax clusters 0, 0, 1, 0, 0 named [1, 0, 1]: predictions 1, 1, 0, 1, 1.
    assert labelled_error(PROBS, LABELS, torch.tensor([1, 0, 1])) == pytest.approx(2 / 5)
    assert labelled_error(PROBS, LABELS, torch.tensor([1, 1, 0])) == pytest.approx(3 / 5)
    assert labelled_error(PROBS, LABELS, torch.tensor([0, 1, 1])) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="N labels"):
        labelled_error(PROBS, LABELS[:4], torch.tensor([0, 0, 1]))


def test_more_clusters_than_classes_may_share_a_class():
    # Six clusters over two classes, each cluster pure: no error, although a one-to-one
    # matching could name only two of them.
    labels = torch.arange(60) % 2
    clusters = torch.arange(60) % 6  # even clusters hold class 0, odd ones class 1
    probs = torch.nn.functional.one_hot(clusters, 6).float() * 0.9 + 0.1 / 6
    assert head_labels(probs, labels).tolist() == [0, 1, 0, 1, 0, 1]
    assert labelled_error(probs, labels, majority_labels(probs, labels)) == 0.0


class _Clusterer(torch.nn.Module):
    """A stand-in model whose cluster probabilities are fixed per image (10 x its pixel)."""

    name = "stand-in"
    cluster_setting = "clusters"
    device = torch.device("cpu")

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table, self.n_clusters = table, table.shape[1]

    def cluster(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[torch.round(10 * x.flatten(1)[:, 0]).long()]


def _data(ids: list[int], labels: list[int], split: str) -> Dataset:
    x = torch.tensor(ids, dtype=torch.float32).view(-1, 1, 1, 1) / 10
    return Dataset(x, torch.tensor(labels), "toy", split)


def test_the_report_names_clusters_on_one_split_and_scores_another():
    model = _Clusterer(PROBS)
    named = _data([0, 1, 2, 3, 4], LABELS.tolist(), "train")
    # Test images 0, 2, 4, 3 (argmax clusters 0, 1, 0, 0) with labels 0, 0, 0, 1.
    scored = _data([0, 2, 4, 3], [0, 0, 0, 1], "test")
    report = cluster_report(model, named, scored, batch_size=2)
    assert report.head == pytest.approx(2 / 4)  # names [1, 0, 1]: 1, 0, 1, 1
    assert report.majority == pytest.approx(1 / 4)  # names [0, 0, 1]: 0, 0, 0, 0
    assert report.hungarian is None  # 3 clusters, 2 classes
    assert (report.clusters, report.classes, report.used) == (3, 2, 2)
    assert report.named_on == "toy train" and report.scored_on == "toy test"
    assert "head rule (paper):  50.00%" in str(report) and "Hungarian" not in str(report)
    # As many clusters as classes: the one-to-one matching on the scored split too. Clusters
    # 0, 1, 0, 0 against labels 0, 0, 0, 1: either matching gets two images right.
    two = _Clusterer(PROBS[:, :2])
    report = cluster_report(two, named, scored)
    assert report.hungarian == pytest.approx(2 / 4) and "Hungarian" in str(report)
    with pytest.raises(ValueError, match="needs labels"):
        cluster_report(model, named, Dataset(scored.x, None, "toy", "test"))


def test_only_models_with_clusters_pass_the_check():
    assert check_clusters(tiny("infogan")) == 3
    assert check_clusters(genlab.create("aae", shape=(1, 4, 4), clusters=5)) == 5
    with pytest.raises(genlab.Unsupported, match="models that do: aae, infogan"):
        check_clusters(tiny("nade"))
    with pytest.raises(ValueError, match="--set clusters=K"):
        check_clusters(tiny("aae"))
    with pytest.raises(ValueError, match="--set categories=K"):
        check_clusters(genlab.create("infogan", shape=(1, 4, 4), categories=0))


def test_infogans_clusters_are_its_category_posterior():
    model = tiny("infogan").eval()
    x = tiny_batch(model, 6)["x"]
    assert torch.equal(model.cluster(x), model.encode(x)[:, :3])
