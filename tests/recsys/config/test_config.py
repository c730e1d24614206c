from pathlib import Path

import pytest

from recsys.config import ConfigError, config_from_dict, config_to_dict, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs").glob("*.yaml"))


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


@pytest.mark.parametrize("override, key", [
    ("train.batch_size=0", "train.batch_size"), ("train.eval_every=0", "train.eval_every"),
    ("train.epochs=0", "train.epochs"), ("train.epochs=-3", "train.epochs"),
    ("train.threads=-1", "train.threads"), ("train.lr=0", "train.lr"),
    ("train.lr=.nan", "train.lr"), ("train.weight_decay=-0.1", "train.weight_decay"),
    ("eval.ks=[0]", r"eval.ks\[0\]"), ("eval.ks=[10, -5]", r"eval.ks\[1\]"),
    ("eval.ks=[]", "eval.ks"), ("eval.chunk_users=0", "eval.chunk_users"),
    ("model.sasrec.max_len=0", "model.sasrec.max_len"),
    ("model.sasrec.dropout=1.5", "model.sasrec.dropout"),
    ("train.loss.temperature=0", "train.loss.temperature"),
    ("train.lr_groups={model.x: 0}", "train.lr_groups.model.x"),
    ("model.reranker.dense_hidden=[64, 0]", r"model.reranker.dense_hidden\[1\]"),
    ("data.cold_items=1", "data.cold_items"), ("export.k=0", "export.k"),
    ("export.nprobe=0", "export.nprobe"), ("export.part_users=-1", "export.part_users"),
])
def test_a_value_out_of_range_is_an_error_naming_the_key(tmp_path, override, key):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\n")
    with pytest.raises(ConfigError, match=rf"config key '{key}': .*(range|at least)"):
        load_config(path, [override])


def test_rules_across_keys_name_the_key_to_change():
    with pytest.raises(ConfigError, match=r"'model\.sasrec\.heads': 3 heads do not divide dim 64"):
        config_from_dict({"model": {"sasrec": {"dim": 64, "heads": 3}}})
    with pytest.raises(ConfigError, match=r"'data\.ctr\.valid_from': 0\.95 must be below"):
        config_from_dict({"data": {"ctr": {"valid_from": 0.95}}})
    with pytest.raises(ConfigError, match=r"'data\.ctr\.negative_max'"):
        config_from_dict({"data": {"ctr": {"positive_min": 3, "negative_max": 3}}})
    assert config_from_dict({"model": {"sasrec": {"dim": 64, "heads": 4}}}).model.sasrec.heads == 4


def test_yaml_syntax_errors_name_the_file_or_override_and_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"{path}: invalid YAML: .* at line \d+, column \d+"):
        load_config(path)
    path.write_text("train:\n  lr: 0.01\n")
    with pytest.raises(ConfigError, match=r"override 'train\.lr=\[1': invalid YAML value"):
        load_config(path, ["train.lr=[1"])
    path.write_bytes(b"train:\n  lr: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_a_config_holds_only_its_own_models_section():
    from recsys.config import TwoTowerConfig

    config = config_from_dict({"model": {"name": "two_tower", "sasrec": {"dim": 8}}})
    assert config.model.sasrec is None and config.model.two_tower == TwoTowerConfig()
    assert set(config_to_dict(config)["model"]) == {"name", "two_tower"}  # written and logged
    assert config_from_dict(config_to_dict(config)) == config
