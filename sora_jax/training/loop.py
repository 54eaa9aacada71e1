"""The training loop shared by `--mode=train` (DiT) and `--mode=train_vae`.

Resumes from the newest readable checkpoint (state + data-iterator state), runs to
`num_steps`, logs every `log_every`, checkpoints every `checkpoint_every`, saves and exits
on SIGTERM, and stops with a clear message on a non-finite loss.
"""
import math
from typing import Any, Callable, Iterator

import jax
import numpy as np
from absl import logging

from sora_jax.training.checkpoint import Checkpointer
from sora_jax.training.metrics import MetricsLogger
from sora_jax.training.optim import NonFiniteLoss, StopSignal


def _eval_due(step: int, total: int, must_save: bool, every: int) -> bool:
  """Whether a held-out evaluation runs after `step` (every `every` steps and at the last
  one; with every == 0, at each checkpoint)."""
  return (step % every == 0 or step == total) if every else must_save


def train_loop(*, workdir: str, ckpt_dir: str, train_cfg, init_state: Callable[[], Any],
               abstract_state: Any, step_fn: Callable, data_iter: Iterator,
               to_device: Callable[[dict], dict], tag: str = "train",
               metrics_name: str = "metrics",
               eval_fn: Callable[[Any, int], dict] | None = None) -> Any:
  """Runs `state, metrics = step_fn(state, batch)` to `train_cfg.num_steps`; returns state.

  `abstract_state` (ShapeDtypeStructs with shardings) lets a restore place arrays exactly
  as a fresh `init_state()` would; `data_iter` has get_state()/set_state(). `eval_fn(state,
  step) -> metrics` runs every `train_cfg.eval_every` steps and at the last step (with
  eval_every 0: at each checkpoint) and its figures are logged with that step.
  """
  ckpt = Checkpointer(ckpt_dir, every=train_cfg.checkpoint_every, keep=train_cfg.keep_checkpoints)
  restored = ckpt.restore(abstract_state)
  if restored is None:
    state, step = init_state(), 0
    print(f"[{tag}] starting at step 0 (no checkpoint in {ckpt_dir})", flush=True)
  else:
    state, data_state, step = restored
    if data_state is not None:
      data_iter.set_state(data_state)
    print(f"[{tag}] resumed from step {step} ({ckpt_dir})", flush=True)
  total = train_cfg.num_steps
  logger = MetricsLogger(workdir, total, start_step=step, tensorboard=train_cfg.tensorboard,
                         name=metrics_name, tag=tag)
  stop = StopSignal()
  last_good = ckpt.latest_step() if ckpt.latest_step() is not None else "none (no checkpoint yet)"
  pending = []
  try:
    while step < total:
      batch = to_device(next(data_iter))
      state, metrics = step_fn(state, batch)
      step += 1
      pending.append(metrics)
      # Read the flag once: a signal landing later in this iteration (its handler runs
      # between bytecodes, e.g. during device_get) is acted on next step, never half-way
      # (which once reported a save it had skipped).
      stopping = stop.requested
      must_save = step % train_cfg.checkpoint_every == 0 or step == total or stopping
      if step % train_cfg.log_every == 0 or must_save:
        host = jax.device_get(pending)
        pending = []
        loss = float(np.mean([m["loss"] for m in host]))
        if not math.isfinite(loss):
          raise NonFiniteLoss(
              f"non-finite loss ({loss}) by step {step}; stopping. The last good checkpoint is "
              f"step {last_good} in {ckpt_dir}; lower the learning rate or check the data, "
              "then rerun to resume from it")
        if step % train_cfg.log_every == 0 or step == total:
          logger.log(step, {k: float(np.mean([m[k] for m in host])) for k in host[-1]})
      if must_save:
        ckpt.maybe_save(step, state, data_iter.get_state(), force=True)
        last_good = step
      if eval_fn is not None and not stopping and _eval_due(step, total, must_save,
                                                           train_cfg.eval_every):
        logger.log(step, eval_fn(state, step))
      if stopping:
        print(f"[{tag}] stopped by signal at step {step}; checkpoint saved", flush=True)
        break
  finally:
    stop.restore()
    ckpt.close()
    logger.close()
  logging.info("%s finished at step %d", tag, step)
  return state
