"""``data.seed`` fixes the split and the partition; ``seed`` the training randomness."""

from __future__ import annotations

import numpy as np
import pytest

from dpfedlora.config import ConfigError
from tests.helpers import tiny_cfg, tiny_setup


def _split(setup):
    return [c.data.input_ids.numpy() for c in setup.clients], setup.eval_data.input_ids.numpy()


def _same(a, b) -> bool:
    shards_a, held_a = a
    shards_b, held_b = b
    return np.array_equal(held_a, held_b) and all(
        np.array_equal(x, y) for x, y in zip(shards_a, shards_b, strict=True)
    )


def test_data_seed_defaults_to_seed():
    assert tiny_cfg().data_seed == 0 and tiny_cfg("seed=5").data_seed == 5
    assert tiny_cfg("seed=5", "data.seed=2").data_seed == 2
    assert _same(_split(tiny_setup("seed=3")), _split(tiny_setup("seed=3", "data.seed=3")))


def test_the_split_follows_data_seed_and_not_seed():
    base = _split(tiny_setup("seed=0", "data.seed=7"))
    # training randomness changes, the data stays: same held-out set, same shards
    assert _same(base, _split(tiny_setup("seed=1", "data.seed=7")))
    # the split changes with data.seed alone
    assert not _same(base, _split(tiny_setup("seed=0", "data.seed=8")))


def test_training_randomness_follows_seed():
    a = tiny_setup("seed=0", "data.seed=7").method.init_state()
    b = tiny_setup("seed=1", "data.seed=7").method.init_state()
    assert a.keys() == b.keys() and any(not a[k].equal(b[k]) for k in a)


@pytest.mark.parametrize("bad", ["-1", "1.5", "yes"])
def test_bad_data_seed_names_the_key(bad):
    with pytest.raises(ConfigError, match="data.seed"):
        tiny_cfg(f"data.seed={bad}")
