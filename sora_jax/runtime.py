"""Process-wide host runtime settings: the one place for them, applied on `import sora_jax`.

Host malloc (Linux, glibc). XLA:CPU gives every execution of a program one temporary
buffer holding all its intermediates (the demo DiT's train step: 414 MB; configs/dit_50m.py:
several GB) from malloc, and frees it afterwards. glibc serves any block over 32 MB with a
fresh mmap and unmaps it on free, so each step faulted its whole temporary buffer in again,
page by page: 105,935 minor faults and ~200 ms of kernel time in a ~780 ms train step of
configs/shapes_tiny.py (batch 16). torch does not pay this (its tensors are separate
blocks, small enough for glibc's adaptive threshold to keep them on the heap). So: one
malloc arena (XLA's worker threads would otherwise get their own, which mmap large blocks
regardless), no mmap and no trimming: the buffer is carved from the heap once and reused
by every later step, with no page faults. The price: the process keeps its peak heap until
it exits (a large program's buffer is not handed back to the OS between steps) and all
threads share one arena. It must run before JAX starts its backend threads (their first
malloc picks their arena); importing sora_jax first does that. Opt out with
SORA_JAX_HOST_MALLOC=0 (e.g. a long-lived process that runs one large program and then
wants its memory back).
"""
import ctypes
import os
import platform

# mallopt(3) parameter numbers (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def configure_host_malloc() -> bool:
  """Applies the malloc settings above; True if they took effect (Linux glibc only)."""
  if os.environ.get("SORA_JAX_HOST_MALLOC", "1") == "0":
    return False
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  # Trim threshold -1: never trim (mallopt(3); glibc stores it as size_t). The largest
  # positive int, 2**31 - 1 (2 GB), was used before: configs/dit_50m.py's 5.5 GB buffer is
  # over it, so glibc gave the buffer back after every step and the next step faulted it
  # in again (5.1 million minor faults, train step 14.4 s against 10.7 s untrimmed).
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
  return all(libc.mallopt(param, value) == 1 for param, value in settings)
