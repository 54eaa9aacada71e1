"""Multi-host training: 2 processes x 4 CPU devices train exactly like 1 process x 8.

Both runs go through the entry point (`python -m sora_jax --mode=train`). The 2-process
run joins through the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
variables (what scripts/launch_*.sh set on real clusters) on 127.0.0.1; each process
loads only its half of every batch, and the global batch is assembled on the mesh. The
per-step losses in metrics.jsonl and the checkpointed parameters after STEPS steps must
agree. Step 1 runs at learning rate 0 (warm-up) and step 2 trains only the zero-initialised
output head, so the blocks' gradients first enter the losses at step 4.
"""
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sora_jax.training import checkpoint, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 5
TINY = [
    "--config.data.num_train=16", "--config.data.num_val=8", "--config.data.batch_size=8",
    "--config.data.buckets=9x16x16",
    "--config.vae.base_dim=8", "--config.vae.z_dim=4", "--config.vae_train.batch_size=4",
    "--config.dit.dim=32", "--config.dit.ffn_dim=64", "--config.dit.num_heads=2",
    "--config.dit.num_layers=2", "--config.text.max_length=8",
    "--config.train.log_every=1", f"--config.train.checkpoint_every={STEPS}",
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


def _restore_params(directory: str, step: int):
  """The raw parameters of a checkpoint written by other processes' devices, restored onto
  this process's first device (orbax needs target shardings for another topology)."""
  mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                               item_handlers=ocp.StandardCheckpointHandler())
  meta = mngr.item_metadata(step)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
  tree = mngr.restore(step, args=ocp.args.StandardRestore(target))
  mngr.close()
  return jax.device_get(tree["params"])


def test_two_processes_train_like_one(encoded, tmp_path):
  one, data = _train_dir(encoded, tmp_path, "one_process")
  _sora(one, "--mode=train", f"--config.train.num_steps={STEPS}", data, devices=8)

  two, data = _train_dir(encoded, tmp_path, "two_processes")
  coordinator = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(
      _command(two, "--mode=train", f"--config.train.num_steps={STEPS}", data), cwd=ROOT,
      env=_env(4, JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i)),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=900)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i} failed:\n{out[-4000:]}"
  # Really one 8-device job: the processes connected their collectives to each other.
  assert any("connected to 7 peer ranks" in out for out in outputs), outputs[0][-2000:]

  ref, got = _losses(one), _losses(two)
  assert [s for s, _ in ref] == list(range(1, STEPS + 1)) == [s for s, _ in got]
  np.testing.assert_allclose([l for _, l in got], [l for _, l in ref], rtol=1e-5)
  assert len({round(l, 6) for _, l in ref[2:]}) == STEPS - 2  # the blocks are training
  ref_params, ref_step = checkpoint.load_params(os.path.join(one, "checkpoints"), use_ema=False)
  assert ref_step == STEPS
  got_params = _restore_params(os.path.join(two, "checkpoints"), STEPS)
  flat_ref = jax.tree_util.tree_flatten_with_path(ref_params)[0]
  assert len(flat_ref) == len(jax.tree.leaves(got_params))
  for (path, want), have in zip(flat_ref, jax.tree.leaves(got_params)):
    np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                               err_msg=jax.tree_util.keystr(path))
