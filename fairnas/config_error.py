"""The error for invalid settings a user chose (in a config or on the command line)."""


class ConfigError(ValueError):
    """A setting is invalid; the message says which one, what is wrong and what to do."""
