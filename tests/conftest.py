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

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")
# The settings of sora_jax.main.enable_compilation_cache, which cannot be imported here:
# sora_jax.main defines absl flags (--config) that scripts imported by tests define too.
jax.config.update("jax_compilation_cache_dir", os.environ["SORA_JAX_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["SORA_JAX_CACHE_MIN_SECS"]))
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
