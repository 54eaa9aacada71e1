"""Checkpoints: orbax CheckpointManager (async) + per-process data-iterator state.

A checkpoint at step N holds the whole train state pytree (params, optimizer state, EMA,
step, RNG) saved by orbax across all processes, plus one JSON file per process with its
Grain iterator state (each process reads a different shard, so each has its own state).
If the newest checkpoint cannot be read (a partial write, a corrupt file), it is reported
and the previous one is used.
"""
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """Saves/restores `(state, data_state)` under `directory` every `every` steps."""

  def __init__(self, directory: str, every: int, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.every = every
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True))

  def _data_path(self, step: int, process: int | None = None) -> str:
    process = jax.process_index() if process is None else process
    return os.path.join(self.directory, "data_state", f"{step}.{process}.json")

  def maybe_save(self, step: int, state: Any, data_state: Any, force: bool = False) -> bool:
    """Saves when `step` is a multiple of `every` (or `force`); returns whether it saved."""
    if not force and step % self.every:
      return False
    if step in self.manager.all_steps():
      return False
    os.makedirs(os.path.dirname(self._data_path(step)), exist_ok=True)
    with open(self._data_path(step), "w") as f:
      json.dump(data_state, f)
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    return True

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, abstract_state: Any) -> tuple[Any, Any, int] | None:
    """Newest readable checkpoint as (state, data_state, step), or None if there is none.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings: arrays come back
    sharded as on a fresh start, whatever the topology that saved them.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        data_state = None
        if os.path.exists(self._data_path(step)):
          with open(self._data_path(step)) as f:
            data_state = json.load(f)
        return state, data_state, step
      except Exception as e:  # pylint: disable=broad-except
        logging.error("checkpoint at step %d in %s cannot be read (%s: %s); trying the "
                      "previous one", step, self.directory, type(e).__name__, e)
        print(f"warning: checkpoint step {step} is unreadable ({type(e).__name__}); "
              "falling back to the previous checkpoint", flush=True)
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def all_steps(directory: str) -> list[int]:
  """Sorted steps of the orbax checkpoints in `directory` ([] if none)."""
  if not os.path.isdir(directory):
    return []
  mngr = ocp.CheckpointManager(os.path.abspath(directory),
                              options=ocp.CheckpointManagerOptions(read_only=True))
  steps = sorted(mngr.all_steps())
  mngr.close()
  return steps


def load_params(directory: str, use_ema: bool = True, step: int | None = None,
                written_by: str = ""):
  """(parameters (EMA or raw), step) from an orbax checkpoint in `directory`, on host.

  step: which checkpoint (default: the newest). Works for full training checkpoints and
  for exported ones holding only {'ema'}. written_by: the mode that writes them; given, a
  directory without checkpoints is a ConfigError naming it (else FileNotFoundError).
  """
  mngr = ocp.CheckpointManager(os.path.abspath(directory),
                              options=ocp.CheckpointManagerOptions(read_only=True))
  steps = mngr.all_steps()
  if step is None:
    step = mngr.latest_step()
  if step is None or step not in steps:
    mngr.close()
    if written_by and not steps:
      from sora_jax.config_check import missing_step  # pylint: disable=g-import-not-at-top
      raise missing_step(f"no checkpoint in {directory}", written_by)
    raise FileNotFoundError(f"no checkpoint {'' if step is None else step} in {directory}"
                            f" (has steps {sorted(steps)})")
  tree = mngr.restore(step, args=ocp.args.StandardRestore())
  mngr.close()
  key = "ema" if (use_ema and "ema" in tree) or "params" not in tree else "params"
  return tree[key], step

