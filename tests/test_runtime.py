"""Host runtime settings (sora_jax/runtime.py): XLA:CPU's temporary buffers are reused."""
import os
import subprocess
import sys

import pytest

_ROOT = os.path.join(os.path.dirname(__file__), "..")
# A program whose 64 MB intermediate (8192 x 2048 f32) lives in XLA's temporary buffer;
# prints the minor page faults of its second run.
_PROBE = """
import resource, sys
import sora_jax
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w, v: (x @ w) @ v)
args = (jnp.ones((8192, 8)), jnp.ones((8, 2048)), jnp.ones((2048, 8)))
f(*args).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
f(*args).block_until_ready()
print(sora_jax.HOST_MALLOC_TUNED, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(setting: str) -> tuple[str, int]:
  env = dict(os.environ, SORA_JAX_HOST_MALLOC=setting, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.path.abspath(_ROOT))
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_temporary_buffer_is_not_faulted_in_again_each_run():
  tuned, faults = _faults("1")
  default, faults_default = _faults("0")
  assert (tuned, default) == ("True", "False")
  # 64 MB is 16,384 pages: glibc's default mmaps and faults them in on every run.
  assert faults_default > 10_000, faults_default
  assert faults < 1_000, faults
