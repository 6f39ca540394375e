#!/usr/bin/env bash
# Start the local PostgreSQL, Redis and RabbitMQ servers that the test suite talks to, if they are down.
set -uo pipefail
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_up() { for _ in $(seq 1 60); do up "$1" && return 0; sleep 1; done; echo "services: $2 did not come up on port $1" >&2; return 1; }

if ! up 5432 && command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  wait_up 5432 PostgreSQL
fi
if ! up 6379 && command -v redis-server >/dev/null 2>&1; then
  echo "services: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  wait_up 6379 Redis
fi
if ! up 5672 && command -v rabbitmq-server >/dev/null 2>&1; then
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached || true
  wait_up 5672 RabbitMQ
fi
exit 0
