import dataclasses
import json

import pytest

from cunet_edge.config import from_dict, load_config_file, to_dict
from cunet_edge.diffusion import DiffusionConfig
from cunet_edge.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Inner:
    a: int = 1
    b: tuple[int, ...] = (1, 2)


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner = Inner()
    name: str = "x"
    rate: float = 0.5
    flag: bool = False
    maybe: int | None = None


def test_round_trip_and_types():
    cfg = from_dict(Outer, {"inner": {"a": 3, "b": [4, 5, 6]}, "rate": 2, "maybe": 7})
    assert cfg.inner == Inner(3, (4, 5, 6)) and cfg.rate == 2.0 and isinstance(cfg.rate, float)
    assert from_dict(Outer, json.loads(json.dumps(to_dict(cfg)))) == cfg


@pytest.mark.parametrize(
    "data, match",
    [
        ({"nope": 1}, "unknown config key nope.*valid keys: flag, inner, maybe, name, rate"),
        ({"inner": {"c": 1}}, "unknown config key inner.c"),
        ({"rate": "fast"}, "rate: expected a number"),
        ({"flag": 1}, "flag: expected true or false"),
        ({"inner": {"a": 1.5}}, "inner.a: expected an integer"),
        ({"inner": 3}, "inner: expected a table"),
    ],
)
def test_bad_values_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(Outer, data)


def test_config_files(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('schedule = "cosine"\ntimesteps = 500\n')
    assert from_dict(DiffusionConfig, load_config_file(toml)) == DiffusionConfig(schedule="cosine", timesteps=500)
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_file(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_file(tmp_path / "missing.toml")
    badjson = tmp_path / "bad.json"
    badjson.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config_file(badjson)


def test_fixed_length_tuples_convert_item_by_item():
    """tuple[float, float] fields (DiffusionConfig.data_range) take a two-item list; each item is checked."""
    assert from_dict(DiffusionConfig, {"data_range": [0, 1]}).data_range == (0.0, 1.0)
    with pytest.raises(ConfigError, match=r"data_range: expected 2 items, got 1"):
        from_dict(DiffusionConfig, {"data_range": [0]})
    with pytest.raises(ConfigError, match=r"data_range\[1\]: expected a number, got 'one'"):
        from_dict(DiffusionConfig, {"data_range": [0, "one"]})
