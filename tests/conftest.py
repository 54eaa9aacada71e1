"""Test setup shared by every test.

8 virtual CPU devices so mesh tests run anywhere (single-device tests use device 0), and a
persistent compilation cache so re-runs skip XLA compiles, which dominate small tests.
"""
import os

os.environ.setdefault("SORA_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
# Every compile is cached, also in the subprocesses (python -m sora_jax in the end-to-end,
# notebook and multi-host tests): their tiny programs repeat across tests and compile in
# under a second, below the entry point's default threshold.
os.environ.setdefault("SORA_JAX_CACHE_MIN_SECS", "0")

import jax  # noqa: E402

from sora_jax import main  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")
main.enable_compilation_cache(None)  # the entry point's own cache setup, from the variables above
