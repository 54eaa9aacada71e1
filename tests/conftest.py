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

# The longest files (wall seconds on a 2-core host, cold cache, 2026-12-06), started first:
# scripts/test.sh runs whole files per worker (pytest-xdist --dist loadfile) in collection
# order, so a long file collected last would run alone at the end. The rest keep their order.
_LONGEST_FIRST = ("test_gcs_workdir.py", "test_end_to_end.py", "test_mesh_equivalence.py",
                  "test_multihost.py", "test_notebook.py", "test_compile.py", "test_dit.py",
                  "test_vae.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: ties keep order
