"""The one error configuration raises: its message names the key and says what to do."""


class ConfigError(Exception):
    pass
