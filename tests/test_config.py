import pytest

from dpfedlora.config import ConfigError, load_config, to_dict
from tests.helpers import TINY, tiny_cfg


def test_tiny_loads_and_overrides_apply():
    cfg = tiny_cfg("method.name=fedsb", "server.rounds=5", "privacy.delta=1e-6")
    assert cfg.method.name == "fedsb" and type(cfg.method).__name__ == "FedSBConfig"
    assert cfg.server.rounds == 5 and cfg.privacy.delta == 1e-6
    # switching method keeps shared keys from the file
    assert cfg.method.rank == 4


@pytest.mark.parametrize(
    "override, message",
    [
        ("server.roundz=3", "unknown config key `server.roundz`. Allowed under `server`"),
        ("server.rounds=three", "`server.rounds` must be an integer. Found 'three'"),
        (
            "method.name=lora",
            "`method.name` must be one of fedex, fedit, fedsb, ffa, flexlora, full, rolora",
        ),
        ("method.rank=0", "`method.rank` must be an integer >= 1. Found 0"),
        ("privacy.mode=user", "`privacy.mode` must be one of none, sample"),
        ("privacy.delta=2", r"`privacy.delta` must be below 0.1 \(a δ this large is no guarantee"),
        ("privacy.delta=0", r"`privacy.delta` must be a number in \(0, 0.1\). Found 0"),
        ("method.init=magic", "unknown config key `method.init`"),
        ("model.train_head=maybe", "`model.train_head` must be true or false"),
    ],
)
def test_bad_values_name_key_and_value(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [override])


def test_round_trip_through_dict():
    from dpfedlora.config import Experiment, from_dict

    cfg = tiny_cfg("method.name=flexlora", "method.ranks=[4,2,1]")
    assert from_dict(Experiment, to_dict(cfg)) == cfg
    assert cfg.method.ranks == (4, 2, 1)


def test_every_shipped_config_loads():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.rglob("*.yaml"))
    assert len(files) >= 11
    for f in files:
        load_config(f)
