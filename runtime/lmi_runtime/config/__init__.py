"""Serving configuration shared by lmi-serve and lmi-compile: schema, loaders, precedence."""

from lmi_runtime.config.env import read_environment
from lmi_runtime.config.loader import PRECEDENCE_DOC, build_config, load_serving_config
from lmi_runtime.config.properties import read_properties
from lmi_runtime.config.schema import ServingConfig
from lmi_runtime.config.settings import Setting
from lmi_runtime.config.suggest import ConfigWarning, nearest, warn_unknown

__all__ = [
    "PRECEDENCE_DOC",
    "ConfigWarning",
    "ServingConfig",
    "Setting",
    "build_config",
    "load_serving_config",
    "nearest",
    "read_environment",
    "read_properties",
    "warn_unknown",
]
