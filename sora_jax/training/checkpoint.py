"""Checkpoints: orbax CheckpointManager (async); each step holds the train state and the
data-iterator state together.

A checkpoint at step N is one orbax step directory with two items: `state` (the whole
train state pytree: params, optimizer state, EMA, step, RNG; arrays written by every
process) and `data` (JSON: the Grain iterator state of every process, written by process
0). Both are committed, and pruned by `keep`, together.

Faults, on restore:
- a newest step that cannot be read (a partial write, a corrupt file) is reported and
  moved aside to `DIR.unreadable/STEP` (not deleted), and the previous step is used; the
  next save writes a fresh step;
- a step whose parameter shapes differ from the config's is a ConfigError naming the
  differing parameters (the config changed; not corruption, not a restart from 0);
- when no step can be read, an error lists them and nothing is moved.
Checkpoints written before the `data` item existed (item `default` plus side files
`data_state/STEP.PROCESS.json`) are still read: a few lines, kept so old workdirs resume.
"""
import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from sora_jax import paths
from sora_jax.config_check import ConfigError

UNREADABLE_SUFFIX = ".unreadable"


class UnreadableCheckpoints(ConfigError):
  """Every checkpoint step in a directory failed to restore (a ConfigError, so the CLI
  prints it as one line and exits 2, like any other problem the user must fix)."""


def _item_dir(directory: epath.Path, step: int) -> epath.Path:
  """The step's train-state item: `state`, or `default` in checkpoints before `data`."""
  step_dir = directory / str(step)
  return step_dir / "state" if (step_dir / "state").exists() else step_dir / "default"


def _gather_json(obj: Any) -> list:
  """[obj of process 0, obj of process 1, ...] on every process (one small all-gather)."""
  if jax.process_count() == 1:
    return [obj]
  raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.array([raw.size], np.int32))
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:raw.size] = raw
  rows = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(r[:int(n)]).decode()) for r, n in zip(rows, lengths.reshape(-1))]


def _shape_differences(saved_meta: Any, abstract_state: Any) -> list[str]:
  """'name: checkpoint shape vs config shape' for every leaf that differs or is missing."""
  def name(path) -> str:  # orbax's own names: 'opt.1.0.mu' for dict keys, indices, fields
    return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                    for k in path)

  def flat(tree):
    return {name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}
  saved, want = flat(saved_meta), flat(abstract_state)
  out = []
  for name in sorted(set(saved) | set(want)):
    a, b = saved.get(name, "absent"), want.get(name, "absent")
    if a != b:
      out.append(f"{name}: {a} in the checkpoint vs {b} in the config")
  return out


class Checkpointer:
  """Saves/restores `(state, data_state)` under `directory` every `every` steps."""

  def __init__(self, directory: str, every: int, keep: int = 3, async_save: bool = True):
    self.directory = paths.path(directory)
    self.every = every
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "data"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True))

  def maybe_save(self, step: int, state: Any, data_state: Any, force: bool = False) -> bool:
    """Starts saving when `step` is a multiple of `every` (or `force`); returns whether it
    started. The save is complete after `wait()`; a step already saved is not rewritten."""
    if not force and step % self.every:
      return False
    data_states = _gather_json(data_state)  # every process, before any may return
    if step in self.manager.all_steps():
      return False
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({"processes": data_states})), force=True)
    return True

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def saved_steps(self) -> list[int]:
    """Steps whose saves are committed (waits for a save in flight)."""
    self.manager.wait_until_finished()
    self.manager.reload()
    return sorted(self.manager.all_steps())

  def _restore_step(self, step: int, abstract_state: Any) -> tuple[Any, Any]:
    item = _item_dir(self.directory, step)
    try:
      meta = ocp.StandardCheckpointHandler().metadata(item)
    except Exception:  # pylint: disable=broad-except
      meta = None  # unreadable metadata: the restore below reports the fault
    if meta is not None:
      diff = _shape_differences(meta, abstract_state)
      if diff:
        raise ConfigError(
            f"checkpoint step {step} in {self.directory} does not fit this config ("
            f"{len(diff)} differences, first: {'; '.join(diff[:3])}); run with the config it "
            "was trained with (its shapes), or start a new workdir")
    if item.name == "state":
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      states = restored["data"]["processes"]
      data_state = states[jax.process_index() % len(states)]
      return restored["state"], data_state
    state = ocp.StandardCheckpointer().restore(item, abstract_state)
    side = self.directory / "data_state" / f"{step}.{jax.process_index()}.json"
    return state, json.loads(side.read_text()) if side.exists() else None

  def restore(self, abstract_state: Any) -> tuple[Any, Any, int] | None:
    """Newest readable checkpoint as (state, data_state, step), or None if there is none.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with shardings: arrays come back
    sharded as on a fresh start, whatever the topology that saved them. Unreadable newer
    steps are moved aside (see the module docstring); shapes that differ from
    `abstract_state` raise ConfigError.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    unreadable = []
    for step in steps:
      try:
        state, data_state = self._restore_step(step, abstract_state)
        ok, error = True, None
      except ConfigError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        ok, error = False, e
      # Every process must agree (a fault seen by one host is a fault for all).
      if jax.process_count() > 1:
        ok = bool(multihost_utils.process_allgather(np.array([ok])).all())
      if ok:
        self._move_aside(unreadable)
        return state, data_state, step
      unreadable.append(step)
      logging.error("checkpoint step %d in %s cannot be read: %s: %s", step, self.directory,
                    type(error).__name__ if error else "fault on another process", error)
      print(f"warning: checkpoint step {step} in {self.directory} is unreadable "
            f"({type(error).__name__ if error else 'on another process'}); trying the previous one",
            flush=True)
    if unreadable:
      raise UnreadableCheckpoints(
          f"no checkpoint in {self.directory} can be read (steps {', '.join(map(str, unreadable))}"
          "); nothing was moved or deleted. Check the storage is reachable and the files "
          "complete, or move the directory away to start from step 0")
    return None

  def _move_aside(self, steps: list[int]) -> None:
    """Moves unreadable step directories to DIR.unreadable/ (kept for inspection), so the
    next save at those steps writes fresh ones."""
    if not steps:
      return
    multihost_utils.sync_global_devices("checkpoint: read attempts done")
    if jax.process_index() == 0:
      aside = epath.Path(str(self.directory) + UNREADABLE_SUFFIX)
      aside.mkdir(parents=True, exist_ok=True)
      for step in steps:
        target, n = aside / str(step), 1
        while target.exists():
          target, n = aside / f"{step}.{n}", n + 1
        _move_tree(self.directory / str(step), target)
        print(f"warning: moved unreadable checkpoint step {step} to {target}", flush=True)
    multihost_utils.sync_global_devices("checkpoint: unreadable steps moved")
    paths.forget_listings(self.directory)
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _move_tree(src: epath.Path, dst: epath.Path) -> None:
  """Moves a directory; on object stores (no directory rename) copies then deletes."""
  if not paths.is_remote(src):
    src.rename(dst)
    return
  paths.copy_tree(src, dst)
  src.rmtree()


def _read_only_manager(directory: str) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(paths.path(directory),
                              options=ocp.CheckpointManagerOptions(read_only=True))


def all_steps(directory: str) -> list[int]:
  """Sorted steps of the orbax checkpoints in `directory` ([] if none)."""
  if not paths.path(directory).is_dir():
    return []
  mngr = _read_only_manager(directory)
  steps = sorted(mngr.all_steps())
  mngr.close()
  return steps


def read_tree(directory: str, step: int | None = None) -> tuple[Any, int]:
  """(the whole saved train-state pytree, step) of checkpoint `step` (default: the newest),
  as host numpy arrays, whatever the devices and processes that saved it (orbax restores
  to the saved shardings unless told otherwise, which fails on another topology: a
  multi-host run's checkpoint read on one host)."""
  steps = all_steps(directory)
  if step is None and steps:
    step = steps[-1]
  if step is None or step not in steps:
    raise FileNotFoundError(f"no checkpoint {'' if step is None else step} in {directory}"
                            f" (has steps {steps})")
  item = _item_dir(paths.path(directory), step)
  meta = ocp.StandardCheckpointer().metadata(item).item_metadata
  as_numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
  return ocp.PyTreeCheckpointer().restore(item, restore_args=as_numpy), step


def load_params(directory: str, use_ema: bool = True, step: int | None = None,
                written_by: str = ""):
  """(parameters (EMA or raw), step) from an orbax checkpoint in `directory`, on host.

  step: which checkpoint (default: the newest). Works for full training checkpoints and
  for exported ones holding only {'ema'}. written_by: the mode that writes them; given, a
  directory without checkpoints is a ConfigError naming it (else FileNotFoundError).
  """
  if written_by and not all_steps(directory):
    from sora_jax.config_check import missing_step  # pylint: disable=g-import-not-at-top
    raise missing_step(f"no checkpoint in {directory}", written_by)
  tree, step = read_tree(directory, step)
  key = "ema" if (use_ema and "ema" in tree) or "params" not in tree else "params"
  return tree[key], step
