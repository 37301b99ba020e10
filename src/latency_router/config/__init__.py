"""The config: TOML validated once into typed, frozen models; every problem reported at once, naming its key path."""

from latency_router.config.errors import ConfigError
from latency_router.config.loader import check_config_main, load_config, parse_config
from latency_router.config.models import (
    LAB_EVENT_KINDS,
    LAB_MODES,
    POLICY_NAMES,
    AgentConfig,
    ApiConfig,
    Config,
    GroupConfig,
    HealthConfig,
    LabConfig,
    LabEvent,
    PathConfig,
    PathLab,
    ProbingConfig,
    RegionConfig,
    ServiceConfig,
)

__all__ = [
    "LAB_EVENT_KINDS",
    "LAB_MODES",
    "POLICY_NAMES",
    "AgentConfig",
    "ApiConfig",
    "Config",
    "ConfigError",
    "GroupConfig",
    "HealthConfig",
    "LabConfig",
    "LabEvent",
    "PathConfig",
    "PathLab",
    "ProbingConfig",
    "RegionConfig",
    "ServiceConfig",
    "check_config_main",
    "load_config",
    "parse_config",
]
