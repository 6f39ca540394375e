"""User-facing errors of the worker layer and the scheduler client."""


class WorkerError(Exception):
    """Invalid TaskSpec, unreachable broker, unknown run id."""
