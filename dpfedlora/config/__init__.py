"""The config: schema (:mod:`.schema`, :mod:`.methods`) apart from loading (:mod:`.load`).

Nothing here imports torch or the methods, so accounting verbs and validation stay fast.
"""

from __future__ import annotations

from .load import from_dict, load_config, nest_overrides, parse_overrides, read_config_file, to_dict
from .methods import (
    METHOD_CONFIGS,
    FedSBConfig,
    FlexLoRAConfig,
    FullConfig,
    method_config_class,
    register_method_config,
)
from .schema import (
    ConfigError,
    DataConfig,
    Experiment,
    LoggingConfig,
    MethodConfig,
    ModelConfig,
    PartitionConfig,
    PrivacyConfig,
    ServerConfig,
    TrainConfig,
    check_choice,
    check_int,
    check_number,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "Experiment",
    "LoggingConfig",
    "FedSBConfig",
    "FlexLoRAConfig",
    "FullConfig",
    "METHOD_CONFIGS",
    "MethodConfig",
    "ModelConfig",
    "PartitionConfig",
    "PrivacyConfig",
    "ServerConfig",
    "TrainConfig",
    "check_choice",
    "check_int",
    "check_number",
    "from_dict",
    "load_config",
    "method_config_class",
    "nest_overrides",
    "parse_overrides",
    "read_config_file",
    "register_method_config",
    "to_dict",
]
