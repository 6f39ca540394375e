"""User-facing errors of envs and backends."""


class EnvError(Exception):
    """Bad task, bad state, bad backend name."""


class SafetyViolation(EnvError):
    """A command was rejected by the safety filter before it reached a robot."""


class BridgeError(EnvError):
    """The NEO bridge refused us, timed out, or spoke a protocol we do not understand."""
