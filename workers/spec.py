"""What the fleet scheduler asks for (`TaskSpec`) and what travels to a worker (the task messages).

Both are pydantic v2 models with `extra='forbid'`: a field nobody declared is an error, not a silent
no-op. `TaskSpec` is validated on the scheduler's side before anything is queued; the messages are
validated again by the worker, which trusts nothing that arrives from the broker. The JSON schemas
of the messages are the public contract documented in docs/tasks_contract.md.
"""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from workers.errors import WorkerError

# Public Celery task names (a contract: never rename, only add).
TASK_NAMES = {
    "episode": "flywheel.run_episode",
    "retrain": "flywheel.retrain",
    "evaluate": "flywheel.evaluate",
    "promote": "flywheel.promote",
    "noop": "flywheel.noop",
}
FAMILIES = ("pick", "place", "push", "drawer", "tissue", "handover")
SPLITS = ("in_distribution", "new_tasks", "ood_objects")
BACKEND_RE = re.compile(r"^(sim|neo:[A-Za-z0-9_-]{1,64})$")
MODEL_KINDS = ("world_model", "idm", "policy")
LOCAL_POLICIES = ("scripted_expert", "play", "perturbed_expert", "recovery_expert", "random")
# The store's source of the episodes of the data policies (the rest are "rollout"): the perturbed expert's
# and the recovery expert's episodes are motion data like play, not demonstrations (each begins with a detour).
DATA_SOURCES = {"scripted_expert": "expert", "play": "play", "perturbed_expert": "play", "recovery_expert": "play"}  # model-free policies (policies/simple.py)
MODEL_POLICIES = {"imagine_then_act": ("world_model", "idm")}  # policy -> the model kinds it runs with

_Tag = Field(default_factory=list, max_length=32)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Strict):
    """A model version to run with: an alias (`champion`) or a version number, of one kind."""

    kind: Literal["world_model", "idm", "policy"] = "world_model"
    alias: StrictStr | None = Field(default=None, max_length=64)
    version: StrictInt | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_of(self) -> ModelRef:
        if (self.alias is None) == (self.version is None):
            raise ValueError("model: give exactly one of alias or version")
        return self


class TaskSpec(_Strict):
    """One request of the fleet scheduler; `attempts` runs are enqueued for it.

    What to do: `kind` (an episode by default, or a flywheel hook). Which task: a `task` dict
    (`TaskInstance.to_dict()`), a `split` item (`split` + `split_index`), a `family` (+ `seed`), or
    just an `instruction`; with none of them a task is sampled from the training mix. Where and how:
    `backend` (`sim` or `neo:<robot_id>`), `policy` (None: the config's), `model` (alias or version).
    """

    kind: Literal["episode", "retrain", "evaluate", "promote", "noop"] = "episode"
    instruction: StrictStr | None = Field(default=None, max_length=500)
    family: Literal["pick", "place", "push", "drawer", "tissue", "handover"] | None = None
    task: dict[str, Any] | None = None
    split: Literal["in_distribution", "new_tasks", "ood_objects"] | None = None
    split_index: StrictInt | None = Field(default=None, ge=0, le=100_000)
    seed: StrictInt | None = Field(default=None, ge=0, le=2**31 - 1)
    backend: StrictStr = "sim"
    policy: StrictStr | None = Field(default=None, max_length=64)
    model: ModelRef | None = None
    models: dict[Literal["world_model", "idm"], StrictInt | StrictStr] | None = None  # per kind: version or alias
    initial_state_episode: StrictInt | None = Field(default=None, ge=1)  # replay that episode's recorded state
    attempts: StrictInt = Field(default=1, ge=1, le=10_000)
    priority: StrictInt = Field(default=0, ge=0, le=9)  # 9 = most urgent
    deadline: datetime | None = None
    max_steps: StrictInt | None = Field(default=None, ge=1, le=100_000)
    tags: list[StrictStr] = _Tag
    params: dict[str, Any] = Field(default_factory=dict)  # hook arguments (retrain/evaluate/promote)

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        if not BACKEND_RE.match(v):
            raise ValueError(f"unknown backend {v!r}: use 'sim' or 'neo:<robot_id>'")
        return v

    @field_validator("model", mode="before")
    @classmethod
    def _model(cls, v: Any) -> Any:
        if isinstance(v, str):  # "champion", "3", "idm:champion", "world_model:4"
            kind, _, name = v.rpartition(":")
            ref: dict[str, Any] = {"kind": kind} if kind else {}
            ref.update({"version": int(name)} if name.isdigit() else {"alias": name})
            return ref
        if isinstance(v, int) and not isinstance(v, bool):
            return {"version": v}
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        for t in v:
            if not 0 < len(t) <= 64:
                raise ValueError(f"tag {t!r} must be 1..64 characters")
        return v

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        return v

    @model_validator(mode="after")
    def _coherent(self) -> TaskSpec:
        if (self.split is None) != (self.split_index is None):
            raise ValueError("split and split_index go together")
        chosen = [n for n in ("task", "split", "family", "initial_state_episode") if getattr(self, n) is not None]
        if len(chosen) > 1:
            raise ValueError(f"give at most one of task, split, family (got {', '.join(chosen)})")
        if len(json.dumps(self.params, default=str)) > 16_384:
            raise ValueError("params must be under 16 KiB of JSON")
        return self

    @property
    def task_name(self) -> str:
        return TASK_NAMES[self.kind]

    @classmethod
    def parse(cls, data: TaskSpec | dict[str, Any]) -> TaskSpec:
        """Validate `data`, raising WorkerError that names every bad field (nothing is enqueued)."""
        if isinstance(data, TaskSpec):
            return data
        if not isinstance(data, dict):
            raise WorkerError(f"a task spec must be a dict or TaskSpec, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise WorkerError(f"invalid task spec: {describe(exc)}") from None


# ---------------------------------------------------------------- messages (scheduler -> worker)


class EpisodePayload(_Strict):
    """The JSON payload of `flywheel.run_episode`, also stored in the ledger row (`task_runs.payload`)."""

    task: dict[str, Any] | None = None
    family: StrictStr | None = None
    split: StrictStr | None = None
    split_index: StrictInt | None = None
    seed: StrictInt = Field(ge=0, le=2**31 - 1)
    instruction: StrictStr | None = Field(default=None, max_length=500)
    backend: StrictStr
    policy: StrictStr = Field(max_length=64)
    model: dict[str, StrictInt] | None = None  # resolved at enqueue: {"world_model": 3, "idm": 2}
    max_steps: StrictInt | None = Field(default=None, ge=1, le=100_000)
    initial_state_episode: StrictInt | None = Field(default=None, ge=1)
    source: Literal["rollout", "expert", "play"] = "rollout"
    tags: list[StrictStr] = _Tag

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        if not BACKEND_RE.match(v):
            raise ValueError(f"unknown backend {v!r}")
        return v


class HookPayload(_Strict):
    """The JSON payload of `flywheel.retrain`, `flywheel.evaluate` and `flywheel.promote`."""

    model: dict[str, StrictInt] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    tags: list[StrictStr] = _Tag


class NoopPayload(_Strict):
    """The JSON payload of `flywheel.noop` (dispatch benchmarks and liveness checks)."""

    tags: list[StrictStr] = _Tag


PAYLOADS: dict[str, type[BaseModel]] = {
    "flywheel.run_episode": EpisodePayload,
    "flywheel.retrain": HookPayload,
    "flywheel.evaluate": HookPayload,
    "flywheel.promote": HookPayload,
    "flywheel.noop": NoopPayload,
}


class TaskMessage(_Strict):
    """The keyword arguments of every flywheel task: `run_id` (ledger row), `attempt`, `payload`."""

    run_id: StrictInt = Field(ge=1)
    attempt: StrictInt = Field(ge=1, le=1000)
    payload: dict[str, Any]


def parse_message(task_name: str, args: tuple, kwargs: dict, max_bytes: int) -> tuple[TaskMessage, BaseModel]:
    """Validate what a worker received; raises WorkerError saying what is wrong with it."""
    if args:
        raise WorkerError(f"positional arguments are not accepted ({len(args)} given); send kwargs")
    size = len(json.dumps(kwargs, default=str))
    if size > max_bytes:
        raise WorkerError(f"payload of {size} bytes exceeds broker.max_payload_bytes={max_bytes}")
    try:
        msg = TaskMessage.model_validate(kwargs)
        payload = PAYLOADS[task_name].model_validate(msg.payload)
    except ValidationError as exc:
        raise WorkerError(f"invalid {task_name} message: {describe(exc)}") from None
    return msg, payload


def describe(exc: ValidationError) -> str:
    """One line naming every bad field: `backend: unknown backend 'mars'; attempts: ...`."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "spec"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
