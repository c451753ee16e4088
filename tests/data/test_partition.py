import numpy as np
import pytest

from dpfedlora.config import ConfigError, DataConfig, PartitionConfig
from dpfedlora.data.partition import label_histogram, partition

LABELS = np.random.default_rng(0).integers(0, 4, size=2000)


def cfg(**p):
    return DataConfig(num_clients=8, partition=PartitionConfig(**p))


@pytest.mark.parametrize(
    "p",
    [
        dict(kind="iid"),
        dict(kind="iid", size_skew=1.0),
        dict(kind="dirichlet", alpha=0.3),
        dict(kind="pathological", labels_per_client=2),
    ],
)
def test_sizes_sum_and_seeded(p):
    a = partition(LABELS, cfg(**p), seed=1)
    b = partition(LABELS, cfg(**p), seed=1)
    c = partition(LABELS, cfg(**p), seed=2)
    flat = np.concatenate(a)
    assert len(a) == 8 and len(flat) == len(LABELS) and len(np.unique(flat)) == len(LABELS)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))


def _skew(alpha, seeds=range(5)):
    """Mean total-variation distance between client label mix and the global mix."""
    glob = np.bincount(LABELS, minlength=4) / len(LABELS)
    out = []
    for s in seeds:
        h = label_histogram(
            LABELS, partition(LABELS, cfg(kind="dirichlet", alpha=alpha), seed=s), 4
        )
        mix = h / np.maximum(h.sum(1, keepdims=True), 1)
        out.append(0.5 * np.abs(mix - glob).sum(1).mean())
    return float(np.mean(out))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    s100, s1, s01 = _skew(100.0), _skew(1.0), _skew(0.1)
    assert s100 < s1 < s01
    assert s100 < 0.1 and s01 > 0.4


def test_pathological_k_labels():
    h = label_histogram(
        LABELS, partition(LABELS, cfg(kind="pathological", labels_per_client=1), seed=0), 4
    )
    assert ((h > 0).sum(1) == 1).all()


def test_size_skew_makes_unequal_shards():
    sizes = [len(s) for s in partition(LABELS, cfg(kind="iid", size_skew=1.5), seed=0)]
    assert max(sizes) > 3 * min(sizes)
    equal = [len(s) for s in partition(LABELS, cfg(kind="iid"), seed=0)]
    assert max(equal) - min(equal) <= 1


def test_by_column_natural_users():
    groups = np.array([f"u{i % 5}" for i in range(2000)])
    shards = partition(
        LABELS,
        DataConfig(num_clients=3, partition=PartitionConfig(kind="by_column", column="user")),
        seed=0,
        groups=groups,
    )
    assert [len(s) for s in shards] == [400, 400, 400]
    assert all(len(set(groups[s])) == 1 for s in shards)
    with pytest.raises(ConfigError, match="fewer than `data.num_clients` = 9"):
        partition(
            LABELS,
            DataConfig(num_clients=9, partition=PartitionConfig(kind="by_column", column="user")),
            seed=0,
            groups=groups,
        )


def test_unknown_partition():
    with pytest.raises(
        ConfigError, match="must be one of iid, dirichlet, pathological, by_column. Found 'shards'"
    ):
        partition(LABELS, cfg(kind="shards"), seed=0)
