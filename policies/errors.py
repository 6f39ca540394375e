"""User-facing errors of policies and models."""


class PolicyError(Exception):
    """Unknown policy, bad model config, corrupt or missing checkpoint."""


class CheckpointError(PolicyError):
    """A checkpoint is missing, truncated, or its sha256 does not match."""
