#!/usr/bin/env bash
# Set up everything the project needs on a fresh Debian machine: system GL libraries for offscreen
# MuJoCo rendering, a virtual environment in .venv, and the package with its pinned dependencies.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

# 1. Offscreen rendering without a GPU: Mesa EGL (default) or OSMesa.
need_pkgs=()
for pkg in libegl1 libegl-mesa0 libgl1; do  # Mesa EGL (MUJOCO_GL=egl); OSMesa is an optional fallback
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need_pkgs[*]} for offscreen MuJoCo rendering"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "setup: missing system packages for offscreen rendering: ${need_pkgs[*]}" >&2
    echo "setup: install them with: sudo apt-get install ${need_pkgs[*]}" >&2
    exit 1
  fi
fi

# 2. The virtual environment and the package (torch==2.13.0 resolves to the local CPU build).
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.flywheel-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q -U pip setuptools wheel
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi
.venv/bin/python -c "import flywheel, envs, policies, workers, db" \
  || { echo "setup: the package does not import; see the pip output above" >&2; exit 1; }
