"""Optimizer (AdamW, warm-up + cosine, clipping), EMA, and run-control helpers."""
import signal

import jax
import jax.numpy as jnp
import optax


def make_optimizer(lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1,
                   weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.99,
                   grad_clip: float = 1.0) -> optax.GradientTransformation:
  """AdamW with linear warm-up then cosine decay to lr * min_lr_ratio, global-norm clipping."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=max(1, warmup_steps),
      decay_steps=max(total_steps, warmup_steps + 1), end_value=lr * min_lr_ratio)
  chain = [optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay)]
  if grad_clip > 0:
    chain.insert(0, optax.clip_by_global_norm(grad_clip))
  return optax.chain(*chain)


def ema_update(ema, params, decay: float, step):
  """EMA with warm-up (decay ramps from 0 so early EMA is not stuck at the init)."""
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: e * d + p.astype(e.dtype) * (1.0 - d), ema, params)


def all_finite(*scalars) -> jax.Array:
  """True when every scalar (loss, gradient norm, ...) is finite: computed inside the jitted
  step, so the loop's per-step non-finite guard reads one bool."""
  return jnp.all(jnp.isfinite(jnp.stack([jnp.asarray(s, jnp.float32) for s in scalars])))


class StopSignal:
  """Turns SIGTERM (a preemption notice) into a flag the loop shares with every process to
  save and exit. SIGINT gets the OS default while training: Ctrl-C ends the process at
  once, even inside a running or hung step, saving nothing (resume from the last
  checkpoint). Python's own handler would only run once the step returned to Python: a
  blocked XLA wait never does, and measured here it let a running step finish and the
  process exit 0."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    self._previous_int = signal.signal(signal.SIGINT, signal.SIG_DFL)

  def _handle(self, signum, frame):
    del frame
    self.requested = True
    print(f"received signal {signum}: saving a checkpoint and exiting", flush=True)

  def restore(self):
    # None: a handler installed outside Python (none to put back); the default then.
    signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)
    signal.signal(signal.SIGINT, signal.default_int_handler if self._previous_int is None
                  else self._previous_int)


class NonFiniteLoss(RuntimeError):
  """Raised when training produced a NaN/inf loss or gradient norm."""
