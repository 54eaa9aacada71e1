"""The shared training loop: exact resume, corrupt-checkpoint fallback, non-finite stop."""
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sora_jax.training import checkpoint, loop, metrics, optim


class CountingIterator:
  """A deterministic data stream with a saveable position (like the Grain iterator)."""

  def __init__(self, nan_at=None):
    self.pos = 0
    self.nan_at = nan_at

  def __next__(self):
    rng = np.random.default_rng(self.pos)
    x = rng.normal(size=(4, 3)).astype(np.float32)
    if self.nan_at is not None and self.pos == self.nan_at:
      x[:] = np.nan
    self.pos += 1
    return {"x": x, "y": x @ np.array([1.0, -2.0, 0.5], np.float32)}

  def get_state(self):
    return {"pos": self.pos}

  def set_state(self, s):
    self.pos = s["pos"]


TX = optim.make_optimizer(0.1, 2, 20, weight_decay=0.0)


@jax.jit
def _step(state, batch):
  def loss_fn(w):
    return jnp.mean((batch["x"] @ w - batch["y"]) ** 2)
  loss, g = jax.value_and_grad(loss_fn)(state["w"])
  upd, opt = TX.update(g, state["opt"], state["w"])
  w = optax.apply_updates(state["w"], upd)
  return {"w": w, "opt": opt, "step": state["step"] + 1}, {"loss": loss}


def _init():
  w = jnp.zeros(3)
  return {"w": w, "opt": TX.init(w), "step": jnp.zeros((), jnp.int32)}


def _cfg(num_steps):
  c = ml_collections.ConfigDict(dict(num_steps=num_steps, log_every=2, checkpoint_every=4,
                                     keep_checkpoints=5, tensorboard=False))
  return c


def _run(workdir, num_steps, it=None):
  it = it or CountingIterator()
  abstract = jax.eval_shape(_init)
  return loop.train_loop(workdir=workdir, ckpt_dir=os.path.join(workdir, "ckpt"),
                         train_cfg=_cfg(num_steps), init_state=_init, abstract_state=abstract,
                         step_fn=_step, data_iter=it, to_device=lambda b: b)


def test_resume_is_exact(tmp_path):
  straight = _run(str(tmp_path / "a"), 16)
  _run(str(tmp_path / "b"), 8)
  resumed = _run(str(tmp_path / "b"), 16)  # a fresh iterator: its position comes from the checkpoint
  np.testing.assert_array_equal(straight["w"], resumed["w"])
  a = metrics.read_jsonl(str(tmp_path / "a" / "metrics.jsonl"))
  b = metrics.read_jsonl(str(tmp_path / "b" / "metrics.jsonl"))
  assert [r["step"] for r in b] == [r["step"] for r in a]
  assert [r["loss"] for r in b] == [r["loss"] for r in a]


def test_corrupt_newest_checkpoint_falls_back(tmp_path, capsys):
  wd = str(tmp_path)
  _run(wd, 8)
  ckpt = os.path.join(wd, "ckpt", "8")
  for root, _, files in os.walk(ckpt):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  _run(wd, 8)
  out = capsys.readouterr().out
  assert "step 8 is unreadable" in out and "resumed from step 4" in out


def test_non_finite_loss_names_step_and_checkpoint(tmp_path):
  with pytest.raises(optim.NonFiniteLoss, match=r"by step 6.*last good checkpoint is step 4"):
    _run(str(tmp_path), 12, CountingIterator(nan_at=5))


class SignalAt(CountingIterator):
  """Sends this process SIGTERM (a preemption notice) when batch `at` is drawn."""

  def __init__(self, at):
    super().__init__()
    self.at = at

  def __next__(self):
    if self.pos == self.at:
      os.kill(os.getpid(), signal.SIGTERM)
    return super().__next__()


def test_sigterm_saves_and_exits_then_resumes_exactly(tmp_path, capsys):
  """SIGTERM mid-run: the step in flight finishes, is checkpointed (off the every-4 grid),
  the run exits, and a rerun continues from there to the same end state."""
  wd = str(tmp_path / "pre")
  state = _run(wd, 16, SignalAt(6))  # signal while drawing the 7th batch
  assert int(state["step"]) == 7
  assert "stopped by signal at step 7" in capsys.readouterr().out
  assert checkpoint.all_steps(os.path.join(wd, "ckpt")) == [4, 7]
  resumed = _run(wd, 16)
  np.testing.assert_array_equal(resumed["w"], _run(str(tmp_path / "straight"), 16)["w"])


def test_sigterm_mid_iteration_is_acted_on_at_the_next_step(tmp_path, capsys, monkeypatch):
  """A signal whose handler runs half-way through an iteration (here while step 6's metrics
  are fetched for logging, after the save decision) stops the run after the next step,
  which is saved: never a claimed save that did not happen."""
  calls = []
  real_get = jax.device_get

  def device_get(x):
    calls.append(1)
    if len(calls) == 3:  # log_every=2: the fetch at step 6 (not a checkpoint step)
      os.kill(os.getpid(), signal.SIGTERM)
    return real_get(x)

  monkeypatch.setattr(loop.jax, "device_get", device_get)
  wd = str(tmp_path)
  state = _run(wd, 16)
  assert int(state["step"]) == 7
  assert "stopped by signal at step 7" in capsys.readouterr().out
  assert checkpoint.all_steps(os.path.join(wd, "ckpt")) == [4, 7]


def test_training_seconds_chain_resumed_segments():
  rows = [{"step": 50, "mode": "train", "elapsed_s": 10.0},
          {"step": 60, "mode": "train_vae", "elapsed_s": 99.0},
          {"step": 100, "mode": "train", "elapsed_s": 20.0},
          {"step": 150, "mode": "train", "elapsed_s": 5.0},  # resumed: the clock restarts
          {"step": 200, "mode": "train", "elapsed_s": 15.0}]
  assert metrics.training_seconds(rows, "train") == {50: 10.0, 100: 20.0, 150: 25.0, 200: 35.0}


def test_eta_does_not_count_the_compile_before_the_first_step(tmp_path, monkeypatch, capsys):
  """45 s of compile, then 0.5 s a step: the ETA after the second log is 80 x 0.5 s."""
  clock = iter([0.0, 50.0, 55.0, 60.0])
  monkeypatch.setattr(metrics.time, "time", lambda: next(clock))
  log = metrics.MetricsLogger(str(tmp_path), total_steps=100, tensorboard=False)
  for step in (10, 20, 30):
    log.log(step, {"loss": 1.0})
  lines = capsys.readouterr().out.splitlines()
  assert "ETA 0:07:30" in lines[0]  # 90 steps at the only rate known yet (50 s / 10 steps)
  assert "ETA 0:00:40" in lines[1] and "ETA 0:00:35" in lines[2], lines


def test_an_eval_row_for_a_logged_step_prints_no_rate(tmp_path, monkeypatch, capsys):
  """A second row for the same step (validation) has no steps/s of its own: the progress
  line leaves it out rather than printing 0.00, and metrics.jsonl has no steps_per_s."""
  clock = iter([0.0, 10.0, 12.0])
  monkeypatch.setattr(metrics.time, "time", lambda: next(clock))
  log = metrics.MetricsLogger(str(tmp_path), total_steps=100, tensorboard=False)
  train_row = log.log(10, {"loss": 1.0})
  eval_row = log.log(10, {"val_psnr": 20.0})
  lines = capsys.readouterr().out.splitlines()
  assert "1.00 steps/s" in lines[0] and "steps/s" not in lines[1], lines
  assert "val_psnr=20" in lines[1]
  assert train_row["steps_per_s"] == 1.0 and "steps_per_s" not in eval_row


def test_eval_runs_every_eval_every_steps_and_at_the_end(tmp_path):
  seen = []
  cfg = _cfg(10)
  cfg.eval_every = 3
  abstract = jax.eval_shape(_init)
  loop.train_loop(workdir=str(tmp_path), ckpt_dir=os.path.join(str(tmp_path), "ckpt"),
                  train_cfg=cfg, init_state=_init, abstract_state=abstract, step_fn=_step,
                  data_iter=CountingIterator(), to_device=lambda b: b,
                  eval_fn=lambda state, step: seen.append((step, int(state["step"]))) or {})
  assert seen == [(3, 3), (6, 6), (9, 9), (10, 10)]
  # eval_every = 0: at each checkpoint (every 4 steps and the last).
  seen.clear()
  cfg.eval_every, cfg.num_steps = 0, 18
  loop.train_loop(workdir=str(tmp_path), ckpt_dir=os.path.join(str(tmp_path), "ckpt"),
                  train_cfg=cfg, init_state=_init, abstract_state=abstract, step_fn=_step,
                  data_iter=CountingIterator(), to_device=lambda b: b,
                  eval_fn=lambda state, step: seen.append(step) or {})
  assert seen == [12, 16, 18]
