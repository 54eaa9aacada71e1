"""The training loop shared by `--mode=train` (DiT) and `--mode=train_vae`.

Resumes from the newest readable checkpoint (state + data-iterator state), runs to
`num_steps`, logs every `log_every`, checkpoints every `checkpoint_every`, and:
- stops at the first non-finite loss or gradient norm, naming the step and the last good
  checkpoint, before any non-finite state is saved;
- on SIGTERM to any one process (a preemption notice), every process saves the same step
  and exits.

Both guards cost no wait per step: the step's `finite` flag and the processes' stop vote
(a one-element all-reduce dispatched beside the step) are read one step later, while the
next step runs; on a step that is logged or saved they are read at once, so a saved
state is always a checked one.
"""
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from sora_jax.training.checkpoint import Checkpointer
from sora_jax.training.metrics import MetricsLogger
from sora_jax.training.optim import NonFiniteLoss, StopSignal


def _eval_due(step: int, total: int, checkpointed: bool, every: int) -> bool:
  """Whether a held-out evaluation runs after `step` (every `every` steps and at the last
  one; with every == 0, at each scheduled checkpoint)."""
  return (step % every == 0 or step == total) if every else checkpointed


class StopVote:
  """Whether any process asked to stop: every process calls it once per step with its own
  flag and gets the same (device) answer, so all decide to stop at the same step."""

  def __init__(self):
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("process",))
    self._shape = (jax.device_count(),)
    self._in = NamedSharding(mesh, P("process"))
    self._any = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, P()))

  def __call__(self, requested: bool) -> jax.Array:
    """A replicated int32 scalar, 1 when some process passed True; not waited for."""
    flag = np.full((1,), int(requested), np.int32)
    return self._any(jax.make_array_from_callback(self._shape, self._in, lambda _: flag))


def train_loop(*, workdir: str, ckpt_dir: str, train_cfg, init_state: Callable[[], Any],
               abstract_state: Any, step_fn: Callable, data_iter: Iterator,
               to_device: Callable[[dict], dict], tag: str = "train",
               metrics_name: str = "metrics",
               eval_fn: Callable[[Any, int], dict] | None = None) -> Any:
  """Runs `state, metrics = step_fn(state, batch)` to `train_cfg.num_steps`; returns state.

  `metrics` holds scalars, among them `finite`: a bool computed in the step, False when its
  loss or gradient norm is not finite (optim.all_finite). `abstract_state`
  (ShapeDtypeStructs with shardings) lets a restore place arrays exactly as a fresh
  `init_state()` would; `data_iter` has get_state()/set_state(). `eval_fn(state, step) ->
  metrics` runs every `train_cfg.eval_every` steps and at the last step (with eval_every 0:
  at each checkpoint) and its figures are logged with that step.
  """
  ckpt = Checkpointer(ckpt_dir, every=train_cfg.checkpoint_every, keep=train_cfg.keep_checkpoints)
  try:
    restored = ckpt.restore(abstract_state)
  except BaseException:
    ckpt.close()
    raise
  if restored is None:
    state, step = init_state(), 0
    started = f"[{tag}] starting at step 0 (no checkpoint in {ckpt_dir})"
  else:
    state, data_state, step = restored
    if data_state is not None:
      data_iter.set_state(data_state)
    started = f"[{tag}] resumed from step {step} ({ckpt_dir})"
  total = train_cfg.num_steps
  logger = MetricsLogger(workdir, total, start_step=step, tensorboard=train_cfg.tensorboard,
                         name=metrics_name, tag=tag)
  # From here on a SIGTERM saves and exits: a supervisor that reads the line below may
  # stop the run at once and gets a checkpoint, not a killed process.
  stop, vote = StopSignal(), StopVote()
  print(started, flush=True)

  def check(step_n, finite, stop_vote) -> bool:
    """Raises if step `step_n` was not finite; returns whether some process asked to stop."""
    finite, stop_vote = jax.device_get((finite, stop_vote))
    if not finite:
      saved = ckpt.saved_steps()
      last = f"step {saved[-1]}" if saved else "none (no checkpoint yet)"
      raise NonFiniteLoss(
          f"non-finite loss or gradient norm at step {step_n}; stopped before saving it. The "
          f"last good checkpoint is {last} in {ckpt_dir}; lower the learning rate or check "
          "the data, then rerun to resume from it")
    return bool(stop_vote)

  pending, unchecked = [], None
  try:
    while step < total:
      batch = to_device(next(data_iter))
      state, metrics = step_fn(state, batch)
      step += 1
      pending.append(metrics)
      current = (step, metrics["finite"], vote(stop.requested))
      # The previous step's flags are ready (or nearly) while this step runs.
      stopping = unchecked is not None and check(*unchecked)
      scheduled_save = step % train_cfg.checkpoint_every == 0 or step == total
      logged = step % train_cfg.log_every == 0 or step == total
      evaluate = eval_fn is not None and _eval_due(step, total, scheduled_save,
                                                    train_cfg.eval_every)
      if scheduled_save or logged or stopping or evaluate:
        stopping = check(*current) or stopping  # this step's state is about to be used
        unchecked = None
      else:
        unchecked = current
      if logged or scheduled_save or stopping:
        host = jax.device_get(pending)
        pending = []
        if logged:
          # A metric some steps lack (the binding contrast's, on image batches) is the mean
          # over the steps that have it.
          names = dict.fromkeys(k for m in host for k in m if k != "finite")
          logger.log(step, {k: float(np.mean([m[k] for m in host if k in m])) for k in names})
      if scheduled_save or stopping:
        ckpt.maybe_save(step, state, data_iter.get_state(), force=True)
      if evaluate and not stopping:
        logger.log(step, eval_fn(state, step))
      if stopping:
        saved = step in ckpt.saved_steps()  # waits for the save to be committed
        print(f"[{tag}] stopped by signal at step {step}; "
              + (f"checkpoint step {step} saved in {ckpt_dir}" if saved else
                 f"no checkpoint of step {step} could be saved in {ckpt_dir}"), flush=True)
        break
  finally:
    stop.restore()
    ckpt.close()
    logger.close()
  logging.info("%s finished at step %d", tag, step)
  return state
