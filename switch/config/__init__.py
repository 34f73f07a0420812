"""Configuration: schools and their limits, timeouts, bounds and downstream destinations,
from built-in defaults and one TOML file, every value range-checked at load."""

from switch.config.errors import ConfigError
from switch.config.settings import (SETTING_RANGES, Config, School, building_of, default_config,
                                    load_config, questionable_settings, validate)

__all__ = ["SETTING_RANGES", "Config", "ConfigError", "School", "building_of", "default_config",
           "load_config", "questionable_settings", "validate"]
