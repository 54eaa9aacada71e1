"""Multi-host training: 2 processes x 4 CPU devices train exactly like 1 process x 8.

Both runs go through the entry point (`python -m sora_jax --mode=train`). The 2-process
run joins through the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
variables (what scripts/launch_*.sh set on real clusters) on 127.0.0.1; each process
loads only its half of every batch, and the global batch is assembled on the mesh. The
per-step losses in metrics.jsonl and the final parameters must agree, also across a
preemption of one process.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from sora_jax.training import checkpoint, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 10  # the preempted run stops at step 1, well before the end
TINY = [
    "--config.data.num_train=16", "--config.data.num_val=8", "--config.data.batch_size=8",
    "--config.data.buckets=9x16x16",
    "--config.vae.base_dim=8", "--config.vae.z_dim=4", "--config.vae_train.batch_size=4",
    "--config.dit.dim=32", "--config.dit.ffn_dim=64", "--config.dit.num_heads=2",
    "--config.dit.num_layers=2", "--config.text.max_length=8",
    "--config.train.log_every=1",
    "--config.train.tensorboard=False",
]

pytestmark = pytest.mark.slow


def _env(devices: int, **extra) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    if k not in extra:
      env.pop(k, None)
  return env


def _command(workdir, *args):
  return [sys.executable, "-m", "sora_jax", "--config=configs/shapes_tiny.py",
          f"--workdir={workdir}", *TINY, *args]


def _sora(workdir, *args, devices=8):
  r = subprocess.run(_command(workdir, *args), cwd=ROOT, env=_env(devices), capture_output=True,
                     text=True, timeout=900)
  assert r.returncode == 0, f"{args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
  """A workdir with ShapesWorld data, a (barely) trained VAE and the encoded latents."""
  wd = str(tmp_path_factory.mktemp("multihost_data"))
  for mode in ("data", "train_vae", "encode"):
    _sora(wd, f"--mode={mode}", "--config.train.num_steps=1", devices=1)
  return wd


def _train_dir(encoded, tmp_path, name):
  wd = str(tmp_path / name)
  os.makedirs(wd)
  shutil.copy(os.path.join(encoded, "latent_stats.json"), wd)
  return wd, f"--config.data.data_dir={os.path.join(encoded, 'data')}"


def _losses(workdir):
  rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return [(r["step"], r["loss"]) for r in rows if r.get("mode") == "train" and "loss" in r]


def _start_two(workdir, *args):
  coordinator = f"127.0.0.1:{_free_port()}"
  return [subprocess.Popen(
      _command(workdir, *args), cwd=ROOT,
      # No persistent compile cache: a hit in one process and a compile in the other
      # can part them by more than the 30 s in which gloo's collectives must meet.
      env=_env(4, JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i), JAX_ENABLE_COMPILATION_CACHE="false"),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]


def _finish(procs, outputs=None):
  outputs = outputs or [None, None]
  for i, p in enumerate(procs):
    out = p.communicate(timeout=900)[0]
    outputs[i] = (outputs[i] or "") + (out or "")
    assert p.returncode == 0, f"process {i} failed:\n{outputs[i][-4000:]}"
  return outputs


def _sigterm_one_at_start(procs):
  """Sends SIGTERM to process 1 only, as soon as it says it starts; returns the outputs.

  The signal lands while the first step compiles (seconds), so the processes' stop vote
  carries it at step 1. Waiting for a later step's log line raced the run: a step of
  this tiny model takes milliseconds, so the run could reach its end before the signal."""
  lines, sent = [], threading.Event()

  def watch():
    for line in procs[1].stdout:
      lines.append(line)
      if not sent.is_set() and "starting at step 0" in line:
        procs[1].send_signal(signal.SIGTERM)
        sent.set()

  reader = threading.Thread(target=watch, daemon=True)
  reader.start()
  out0 = procs[0].communicate(timeout=900)[0]
  procs[1].wait(timeout=900)
  reader.join(timeout=60)
  assert sent.is_set(), "".join(lines)[-3000:]
  for i, (p, out) in enumerate(zip(procs, (out0, "".join(lines)))):
    assert p.returncode == 0, f"process {i} failed:\n{out[-4000:]}"
  return [out0, "".join(lines)]


def test_two_processes_train_like_one_and_stop_together(encoded, tmp_path):
  """2 processes x 4 devices train exactly like 1 x 8; SIGTERM to ONE process makes both
  save the same step and exit; the resumed run reproduces the uninterrupted losses."""
  steps = [f"--config.train.num_steps={STEPS}", f"--config.train.checkpoint_every={STEPS}"]
  one, data = _train_dir(encoded, tmp_path, "one_process")
  _sora(one, "--mode=train", data, *steps, devices=8)

  two, data = _train_dir(encoded, tmp_path, "two_processes")
  outputs = _sigterm_one_at_start(_start_two(two, "--mode=train", data, *steps))
  # Really one 8-device job: the processes connected their collectives to each other.
  assert any("connected to 7 peer ranks" in out for out in outputs), outputs[0][-2000:]
  ckpt = os.path.join(two, "checkpoints")
  saved = checkpoint.all_steps(ckpt)
  assert len(saved) == 1 and 1 <= saved[0] < STEPS, (saved, outputs[0][-2000:])
  # Both processes wrote their shards of that one step (orbax commits it only then).
  assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(
      os.listdir(os.path.join(ckpt, str(saved[0]), "state")))

  _finish(_start_two(two, "--mode=train", data, *steps))
  ref, got = _losses(one), _losses(two)
  assert [s for s, _ in ref] == list(range(1, STEPS + 1)) == [s for s, _ in got]
  np.testing.assert_allclose([l for _, l in got], [l for _, l in ref], rtol=1e-5)
  # The losses see the transformer blocks only through an output head that starts at zero;
  # compare every final parameter, and check the blocks' own weights moved after the
  # preemption (so their gradients were exchanged correctly over the two processes too).
  final_one, step_one = checkpoint.load_params(os.path.join(one, "checkpoints"), use_ema=False)
  final_two, step_two = checkpoint.load_params(ckpt, use_ema=False)
  early, _ = checkpoint.load_params(ckpt, use_ema=False, step=saved[0])
  assert step_one == step_two == STEPS
  leaves = lambda tree: dict(jax.tree_util.tree_leaves_with_path(tree))
  one_l, two_l, early_l = leaves(final_one), leaves(final_two), leaves(early)
  assert one_l.keys() == two_l.keys() and len(one_l) > 10
  for path, value in one_l.items():
    np.testing.assert_allclose(two_l[path], value, rtol=1e-4, atol=1e-7,
                               err_msg=jax.tree_util.keystr(path))
  moved = [jax.tree_util.keystr(p) for p, v in two_l.items()
           if "block" in jax.tree_util.keystr(p).lower() and not np.array_equal(v, early_l[p])]
  assert moved, sorted(jax.tree_util.keystr(p) for p in two_l)
