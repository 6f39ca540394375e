"""Test doubles shared by test folders (fault injection and recording around the real components)."""
from __future__ import annotations

from typing import Any

import numpy as np


class RecordingBackend:
    """Delegates to a real backend and keeps a copy of every chunk passed to `step` and of every safety
    reference a planner asked for (`command_reference`)."""

    def __init__(self, backend: Any) -> None:
        self.backend, self.sent, self.references = backend, [], []

    def command_reference(self) -> Any:
        ref = self.backend.command_reference()
        self.references.append(None if ref is None else np.array(ref, copy=True))
        return ref

    def step(self, actions: np.ndarray) -> Any:
        self.sent.append(np.array(actions, copy=True))
        return self.backend.step(actions)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)
