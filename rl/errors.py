"""Exceptions that reach the user. Each message names the offending thing (key, file, function, sample)."""


class OrchardError(Exception):
    """Base class: the CLI prints these as one clean error line instead of a traceback."""


class ConfigError(OrchardError):
    """A config key is unknown, has the wrong type, or is out of bounds. The message carries the dotted path."""


class RewardError(OrchardError):
    """A reward function raised, returned the wrong length/type, NaN, or timed out."""


class WeightSyncError(OrchardError):
    """After a weight update, an engine's log-probs disagree with the trainer's beyond tolerance."""
