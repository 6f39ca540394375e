"""The exception types for errors a user can cause; the CLI prints their message, not a traceback.

`db`, `envs`, `policies` and `workers` import nothing of `flywheel`, so each defines its own
user-error class; `user_errors()` collects them for the CLI.
"""
from __future__ import annotations

import importlib


class FlywheelError(Exception):
    """A user-facing error: bad config, bad task, bad file, unreachable service."""


class ConfigError(FlywheelError):
    """A config or override that does not compose or does not validate."""


# (module, class name) of every package's user-error type
_PACKAGE_ERRORS = [
    ("db.errors", "StoreError"),
    ("envs.errors", "EnvError"),
    ("policies.errors", "PolicyError"),
    ("workers.errors", "WorkerError"),
]


def user_errors() -> tuple[type[BaseException], ...]:
    """All user-error classes that exist, for `except user_errors():` at the CLI."""
    found: list[type[BaseException]] = [FlywheelError]
    for mod_name, cls_name in _PACKAGE_ERRORS:
        try:
            found.append(getattr(importlib.import_module(mod_name), cls_name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)
