"""Broker and result-backend URLs, and the embedded broker (SQLite through kombu's SQLAlchemy transport).

The embedded broker needs no server: queues are tables in `<data_dir>/broker.sqlite`. It is kombu's
`sqla` transport with two changes: the idle polling interval is configurable (kombu's default is one
second, and its transport hands every transport option to `create_engine`, which refuses unknown
keys), and SQLite waits on a busy database instead of failing. Redis and RabbitMQ are used by URL.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqla

from workers.config import BrokerConfig

EMBEDDED_SCHEME = "flywheelsqla"  # our alias of kombu's sqla transport (see Transport below)
_ENGINE_ONLY_DROP = ("polling_interval",)


class Channel(kombu_sqla.Channel):
    """kombu's SQLAlchemy channel, minus the transport options that are not engine arguments, and safe
    when several processes declare the same queue at once (kombu's lock is per process: the loser of the
    race got an IntegrityError on the queue's unique name and its worker died)."""

    def _get_or_create(self, queue):
        from sqlalchemy.exc import IntegrityError

        try:
            return super()._get_or_create(queue)
        except IntegrityError:  # another process created it first: use theirs
            self.session.rollback()
            obj = self.session.query(self.queue_cls).filter(self.queue_cls.name == queue).first()
            if obj is None:
                raise
            return obj

    def _engine_from_config(self):
        client = self.connection.client
        saved = dict(client.transport_options)
        try:
            for key in _ENGINE_ONLY_DROP:
                client.transport_options.pop(key, None)
            return super()._engine_from_config()
        finally:
            client.transport_options.clear()
            client.transport_options.update(saved)


class Transport(kombu_sqla.Transport):
    """The embedded broker's transport: SQLite tables as queues."""

    Channel = Channel


TRANSPORT_ALIASES.setdefault(EMBEDDED_SCHEME, "workers.broker:Transport")


def is_embedded(broker: BrokerConfig) -> bool:
    return broker.url is None or broker.url.startswith(("sqla+", f"{EMBEDDED_SCHEME}+"))


def broker_url(broker: BrokerConfig, data_dir: str | Path) -> str:
    """The kombu URL: the configured one, or the embedded SQLite broker under data_dir."""
    if broker.url is None:
        path = Path(data_dir).expanduser().resolve() / "broker.sqlite"
        return f"{EMBEDDED_SCHEME}+sqlite:///{path}"
    if broker.url.startswith("sqla+"):  # a user-written embedded URL gets our polling fix too
        return f"{EMBEDDED_SCHEME}+" + broker.url[len("sqla+"):]
    return broker.url


def result_url(broker: BrokerConfig) -> str | None:
    """Celery's result backend. The task ledger in the store is the source of truth for every run,
    so the embedded deployment keeps no Celery results at all (None)."""
    return broker.result_url


def transport_options(broker: BrokerConfig) -> dict[str, Any]:
    """Per-transport options: Redis visibility timeout > hard time limit; SQLite busy wait."""
    if is_embedded(broker):
        return {"polling_interval": broker.polling_interval_s, "connect_args": {"timeout": 60}}
    if broker.url.startswith(("redis://", "rediss://")):
        return {"visibility_timeout": broker.visibility_timeout_s}
    return {}


def ensure_embedded_broker(broker: BrokerConfig, data_dir: str | Path) -> None:
    """Create the embedded broker's tables once, before several worker processes race to do it."""
    if not is_embedded(broker):
        return
    from kombu import Connection

    Path(data_dir).expanduser().resolve().mkdir(parents=True, exist_ok=True)
    with Connection(broker_url(broker, data_dir), transport_options=transport_options(broker)) as conn:
        conn.default_channel  # noqa: B018 - opening the channel runs create_all
