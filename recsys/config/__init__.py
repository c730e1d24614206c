"""Experiment configuration: one YAML file -> frozen dataclasses (the bottom layer: it imports
nothing of the project).

`sections` holds the schema (one small dataclass per section, value ranges as annotations);
`loading` reads YAML and `--set` overrides into it, strictly, naming the key of any error.
"""

from recsys.config.distributed import DistributedConfig
from recsys.config.loading import (
    apply_override,
    config_from_dict,
    config_to_dict,
    load_config,
    read_yaml,
    stored_config,
)
from recsys.config.recformer import CorpusSet, RecformerConfig
from recsys.config.sections import (
    Config,
    ConfigError,
    CtrDataConfig,
    DataConfig,
    EvalConfig,
    ExportConfig,
    ItemTextConfig,
    LossConfig,
    MaskingConfig,
    ModelConfig,
    PopularityConfig,
    RerankerConfig,
    SASRecConfig,
    TextEncoderConfig,
    TrackingConfig,
    TrainConfig,
    TwoTowerConfig,
)
from recsys.config.sparse import SparseConfig

__all__ = [
    "Config", "ConfigError", "CorpusSet", "CtrDataConfig", "DataConfig", "DistributedConfig",
    "EvalConfig", "ExportConfig", "ItemTextConfig", "LossConfig", "MaskingConfig", "ModelConfig",
    "PopularityConfig", "RecformerConfig", "RerankerConfig", "SASRecConfig", "SparseConfig",
    "TextEncoderConfig", "TrackingConfig", "TrainConfig", "TwoTowerConfig", "apply_override",
    "config_from_dict", "config_to_dict", "load_config", "read_yaml", "stored_config",
]
