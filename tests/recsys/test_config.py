from pathlib import Path

import pytest

from recsys.config import ConfigError, config_from_dict, config_to_dict, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path):
    config = load_config(path)
    assert config_from_dict(config_to_dict(config)) == config


def test_every_key_in_shipped_configs_is_commented():
    for path in CONFIGS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            body = line.split("#")[0].strip()
            if body and not body.endswith(":"):
                assert "# (" in line, f"{path.name}:{number} lacks a '# (type) meaning' comment"


def test_overrides_parse_values_as_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\n")
    config = load_config(path, ["train.lr=3e-4", "eval.ks=[5, 10]", "model.sasrec.dim=32"])
    assert config.train.lr == pytest.approx(3e-4)
    assert config.eval.ks == (5, 10)
    assert config.model.sasrec.dim == 32
    assert config.train.epochs == 200  # untouched default


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lrr'"):
        config_from_dict({"train": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match=r"'model\.sasrec\.depth'"):
        config_from_dict({"model": {"sasrec": {"depth": 3}}})


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"train": {"epochs": "ten"}}, "train.epochs"),
        ({"train": {"epochs": 1.5}}, "train.epochs"),
        ({"eval": {"exclude_seen": 1}}, "eval.exclude_seen"),
        ({"model": {"name": "gpt"}}, "model.name"),
        ({"eval": {"ks": 10}}, "eval.ks"),
        ({"data": {"mapping": [1]}}, "data.mapping"),
    ],
)
def test_wrong_types_are_named(raw, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        config_from_dict(raw)


def test_int_is_accepted_where_float_is_expected():
    assert config_from_dict({"train": {"lr": 1}}).train.lr == 1.0


def test_config_is_frozen():
    config = config_from_dict({})
    with pytest.raises(AttributeError):
        config.train.lr = 1.0  # type: ignore[misc]


def test_bad_override_and_missing_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("{}")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["train.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
