# The README's quick start: `make demo` (set up, then run the main job) and `make test`.
.PHONY: setup demo test test-slow bench

export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/flywheel run preset=demo

test: setup
	bash scripts/services.sh
	.venv/bin/python -m pytest -q -p no:cacheprovider

test-slow: setup
	bash scripts/services.sh
	.venv/bin/python -m pytest -q -m slow

bench: setup
	bash scripts/services.sh
	for b in bench/bench_*.py; do echo "== $$b"; .venv/bin/python $$b; done
