"""The shared training loop: exact resume, checkpoint faults, non-finite stop, SIGTERM.

The tests check the checkpoint directory and the restored state, not the printed text.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sora_jax.config_check import ConfigError
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


def _make_step(dim):
  @jax.jit
  def step(state, batch):
    def loss_fn(w):
      return jnp.mean((batch["x"] @ w[:3] - batch["y"]) ** 2)
    loss, g = jax.value_and_grad(loss_fn)(state["w"])
    upd, opt = TX.update(g, state["opt"], state["w"])
    w = optax.apply_updates(state["w"], upd)
    gnorm = optax.global_norm(g)
    return ({"w": w, "opt": opt, "step": state["step"] + 1},
            {"loss": loss, "grad_norm": gnorm, "finite": optim.all_finite(loss, gnorm)})

  def init():
    w = jnp.zeros(dim)
    return {"w": w, "opt": TX.init(w), "step": jnp.zeros((), jnp.int32)}
  return step, init


_step, _init = _make_step(3)


def _cfg(num_steps, keep=5):
  c = ml_collections.ConfigDict(dict(num_steps=num_steps, log_every=2, checkpoint_every=4,
                                     keep_checkpoints=keep, tensorboard=False))
  return c


def _run(workdir, num_steps, it=None, dim=3, keep=5):
  it = it or CountingIterator()
  step, init = (_step, _init) if dim == 3 else _make_step(dim)
  return loop.train_loop(workdir=workdir, ckpt_dir=os.path.join(workdir, "ckpt"),
                         train_cfg=_cfg(num_steps, keep), init_state=init,
                         abstract_state=jax.eval_shape(init), step_fn=step, data_iter=it,
                         to_device=lambda b: b)


def _steps(workdir):
  return checkpoint.all_steps(os.path.join(workdir, "ckpt"))


def _restore(workdir):
  """(state, data_state, step) of the newest checkpoint, as a resume reads it."""
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "ckpt"), every=4)
  try:
    return ckpt.restore(jax.eval_shape(_init))
  finally:
    ckpt.close()


def test_resume_is_exact(tmp_path):
  straight = _run(str(tmp_path / "a"), 16)
  _run(str(tmp_path / "b"), 8)
  resumed = _run(str(tmp_path / "b"), 16)  # a fresh iterator: its position comes from the checkpoint
  np.testing.assert_array_equal(straight["w"], resumed["w"])
  a = metrics.read_jsonl(str(tmp_path / "a" / "metrics.jsonl"))
  b = metrics.read_jsonl(str(tmp_path / "b" / "metrics.jsonl"))
  assert [r["step"] for r in b] == [r["step"] for r in a]
  assert [r["loss"] for r in b] == [r["loss"] for r in a]


def test_iterator_state_lives_in_the_orbax_step_and_is_pruned_with_it(tmp_path):
  wd = str(tmp_path)
  _run(wd, 12, keep=2)
  ckpt = tmp_path / "ckpt"
  assert _steps(wd) == [8, 12]
  assert {"data", "state"} <= set(os.listdir(ckpt / "12"))
  assert not (ckpt / "data_state").exists()
  assert _restore(wd)[1:] == ({"pos": 12}, 12)


def _garble(step_dir):
  for root, _, files in os.walk(step_dir):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")


def _drop_array_data(step_dir):
  """What a save cut off half-way leaves: metadata present, array data missing."""
  shutil.rmtree(os.path.join(step_dir, "state", "d"))
  for name in os.listdir(os.path.join(step_dir, "state")):
    if name.startswith("ocdbt.process"):
      shutil.rmtree(os.path.join(step_dir, "state", name))


@pytest.mark.parametrize("damage", [_garble, _drop_array_data])
def test_unreadable_newest_step_is_moved_aside_and_saved_afresh(tmp_path, damage):
  wd = str(tmp_path)
  _run(wd, 8)
  damage(str(tmp_path / "ckpt" / "8"))
  state = _run(wd, 8)  # resumes from 4, steps 5..8 again, saves a fresh 8
  assert os.listdir(tmp_path / "ckpt.unreadable") == ["8"]  # kept for inspection
  assert _steps(wd) == [4, 8]
  restored = _restore(wd)
  assert restored[1:] == ({"pos": 8}, 8)
  np.testing.assert_array_equal(restored[0]["w"], state["w"])
  np.testing.assert_array_equal(state["w"], _run(str(tmp_path / "straight"), 8)["w"])


def test_every_step_unreadable_is_an_error_listing_them(tmp_path):
  wd = str(tmp_path)
  _run(wd, 8)
  for step in (4, 8):
    _garble(str(tmp_path / "ckpt" / str(step)))
  with pytest.raises(checkpoint.UnreadableCheckpoints, match=r"steps 8, 4"):
    _run(wd, 12)
  # The CLI prints ConfigErrors as one line (main._main_with_clear_errors), not a traceback.
  assert issubclass(checkpoint.UnreadableCheckpoints, ConfigError)
  assert _steps(wd) == [4, 8] and not (tmp_path / "ckpt.unreadable").exists()
  assert not (tmp_path / "ckpt" / "12").exists()  # no silent restart


def test_shape_change_is_a_config_error_naming_the_parameters(tmp_path):
  wd = str(tmp_path)
  _run(wd, 4)
  with pytest.raises(ConfigError, match=r"w: \(3,\) in the checkpoint vs \(5,\) in the config"):
    _run(wd, 8, dim=5)
  assert _steps(wd) == [4] and not (tmp_path / "ckpt.unreadable").exists()


@pytest.mark.parametrize("nan_at, last_good", [(5, 4), (7, 4), (1, None)])
def test_non_finite_step_stops_before_it_is_saved(tmp_path, nan_at, last_good):
  """A NaN batch at position p makes step p+1 non-finite: the run stops naming it and the
  last good checkpoint, and no later step is saved (p=7: step 8 is a checkpoint step)."""
  last = "none" if last_good is None else f"step {last_good}"
  with pytest.raises(optim.NonFiniteLoss, match=rf"at step {nan_at + 1};.*checkpoint is {last}"):
    _run(str(tmp_path), 12, CountingIterator(nan_at=nan_at))
  assert _steps(str(tmp_path)) == ([] if last_good is None else [last_good])


class SignalAt(CountingIterator):
  """Sends this process SIGTERM (a preemption notice) when batch `at` is drawn."""

  def __init__(self, at):
    super().__init__()
    self.at = at

  def __next__(self):
    if self.pos == self.at:
      os.kill(os.getpid(), signal.SIGTERM)
    return super().__next__()


@pytest.mark.parametrize("at, stop_step", [(5, 6), (4, 6)])
def test_sigterm_saves_and_exits_then_resumes_exactly(tmp_path, at, stop_step):
  """SIGTERM mid-run: the run saves a step off the every-4 grid and exits, and a rerun
  continues from there to the same end state. A signal during a step that is checked at
  once (logged, at=5) stops after it; otherwise the vote is read during the next step."""
  wd = str(tmp_path / "pre")
  state = _run(wd, 16, SignalAt(at))
  assert int(state["step"]) == stop_step
  assert _steps(wd) == [4, stop_step]
  resumed = _run(wd, 16)
  np.testing.assert_array_equal(resumed["w"], _run(str(tmp_path / "straight"), 16)["w"])


_SPIN = """
import sys, time, jax, jax.numpy as jnp
from sora_jax.training import optim
spin = jax.jit(lambda x: jax.lax.fori_loop(0, 3000, lambda i, a: jnp.tanh(a @ a), x))
x = jnp.ones((512, 512)) * 0.01
spin.lower(x).compile()
stop = optim.StopSignal()
print("READY", flush=True)
t = time.time()
spin(x).block_until_ready()  # several seconds inside XLA, as in a long or hung step
print("finished", time.time() - t, flush=True)
"""


def test_sigint_ends_even_a_running_step():
  """Ctrl-C during training ends the process at once, inside a running XLA computation
  (Python's default handler would wait for it, then exit 0), and restore() puts Python's
  handler back."""
  proc = subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True,
                          cwd=os.path.join(os.path.dirname(__file__), ".."))
  try:
    assert proc.stdout.readline().strip() == "READY"
    time.sleep(0.3)
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=120)
    waited = time.time() - sent
  finally:
    proc.kill()
  assert rc == -signal.SIGINT and waited < 1.5, (rc, waited, proc.stdout.read())
  before = signal.getsignal(signal.SIGINT)
  stop = optim.StopSignal()
  assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL
  assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
  stop.restore()
  assert signal.getsignal(signal.SIGINT) is before


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


def test_a_metric_some_steps_lack_is_averaged_over_the_steps_that_have_it(tmp_path):
  """The binding contrast logs only on video steps: a logged row averages each metric over
  the steps of its window that report it."""
  def step(state, batch):
    new, m = _step(state, batch)
    if int(state["step"]) % 2 == 0:  # steps 1, 3, 5, ... report an extra metric
      m = dict(m, extra=jnp.float32(10.0) * (state["step"] + 1))
    return new, m

  loop.train_loop(workdir=str(tmp_path), ckpt_dir=str(tmp_path / "ckpt"), train_cfg=_cfg(6),
                  init_state=_init, abstract_state=jax.eval_shape(_init), step_fn=step,
                  data_iter=CountingIterator(), to_device=lambda b: b, tag="t")
  rows = [r for r in metrics.read_jsonl(str(tmp_path / "metrics.jsonl")) if "loss" in r]
  assert [r["step"] for r in rows] == [2, 4, 6]
  # log_every=2: each window has one reporting step (1, 3, 5).
  assert [r["extra"] for r in rows] == [10.0, 30.0, 50.0]
