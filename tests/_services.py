"""Real services for the tests: started if they are down; tests only ever remove what they created."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
START = {
    5432: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -1) main start",
    6379: 'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no '
          "--dir /var/lib/redis --logfile /var/log/redis/ci.log",
    5672: "rabbitmq-server -detached",
}


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def ensure_service(port: int, timeout: float = 60.0) -> None:
    """Start the local server on `port` (PostgreSQL, Redis, RabbitMQ) if nothing listens there."""
    if port_open(port):
        return
    subprocess.run(START[port], shell=True, check=False, capture_output=True)
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"service on port {port} did not start with: {START[port]}")
        time.sleep(0.5)


@contextlib.contextmanager
def fresh_pg_database(prefix: str = "flywheel_test") -> Iterator[str]:
    """A brand-new PostgreSQL database (plain `postgresql://` URL), dropped WITH (FORCE) afterwards."""
    import psycopg

    ensure_service(5432)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Redis database 11 (ours); tests delete only keys with their own random queue prefix."""
    ensure_service(6379)
    return "redis://127.0.0.1:6379/11"


def redis_cleanup(url: str, prefix: str) -> None:
    """Delete only the Redis keys of our queue prefix."""
    import redis

    r = redis.Redis.from_url(url)
    for key in r.scan_iter(match=f"*{prefix}*"):
        r.delete(key)
