"""Host runtime settings (sora_jax/runtime.py): XLA:CPU's temporary buffers are reused."""
import os
import subprocess
import sys

import pytest

_ROOT = os.path.join(os.path.dirname(__file__), "..")
# A program whose 64 MB intermediate (8192 x 2048 f32) lives in XLA's temporary buffer;
# prints the minor page faults of each of its next thirty runs.
_PROBE = """
import resource, sys
import sora_jax
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w, v: (x @ w) @ v)
args = (jnp.ones((8192, 8)), jnp.ones((8, 2048)), jnp.ones((2048, 8)))
f(*args).block_until_ready()
faults = []
for _ in range(30):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(*args).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sora_jax.HOST_MALLOC_TUNED, *faults)
"""
_PAGES = 64 * 2 ** 20 // 4096  # the temporary buffer, in 4 KiB pages


def _faults(setting: str, probe: str = _PROBE) -> tuple[str, list[int]]:
  """Runs `probe` in a fresh process with SORA_JAX_HOST_MALLOC=setting: (whether the
  settings took effect, the minor page faults it printed)."""
  env = dict(os.environ, SORA_JAX_HOST_MALLOC=setting, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.path.abspath(_ROOT))
  out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  return out[0], [int(n) for n in out[1:]]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_temporary_buffer_is_not_faulted_in_again_each_run():
  tuned, faults = _faults("1")
  default, faults_default = _faults("0")
  assert (tuned, default) == ("True", "False")
  # glibc's default mmaps the 64 MB buffer and faults all its pages in on every run.
  assert min(faults_default) > _PAGES * 0.6, faults_default
  # Tuned, the buffer comes from the heap and is reused. A run may still find the freed
  # block split by a small allocation made since (XLA's threads allocate as they are
  # scheduled) and grow the heap by the buffer's size; each growth leaves one more free
  # block, so the growths stop after a few runs, where the default faults every run.
  # Measured beside a busy core, five processes: 3-5 of the first 15 runs grew the heap,
  # none of the last 15 (CI under two test workers: 5 of the first 10).
  grew = [f > _PAGES // 2 for f in faults]
  assert sum(grew) <= 12, faults
  assert sum(grew[-10:]) <= 2, faults


# A block over 2 GiB, the largest trim threshold an int mallopt value can name: XLA:CPU's
# temporary buffer of configs/dit_50m.py's train step is 5.5 GB. Prints the minor page
# faults of three rounds of malloc, touching every page, free.
_PROBE_LARGE = """
import ctypes, resource
import sora_jax
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.restype, libc.memset.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int,
                                                              ctypes.c_size_t]
n = 2 ** 31 + 2 ** 28
faults = []
for _ in range(3):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc(n)
  assert p, "malloc failed"
  libc.memset(p, 1, n)
  libc.free(p)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sora_jax.HOST_MALLOC_TUNED, *faults)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_a_buffer_over_2_gib_is_not_given_back_after_each_run():
  tuned, faults = _faults("1", _PROBE_LARGE)
  pages = (2 ** 31 + 2 ** 28) // 4096
  assert tuned == "True"
  assert faults[0] > pages * 0.9, faults  # the first round faults the block in
  # Later rounds reuse the heap; with a trim threshold of 2**31 - 1 glibc handed the
  # block back on free and every round faulted all of it in again.
  assert max(faults[1:]) < pages * 0.05, faults
