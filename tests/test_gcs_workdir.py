"""A run whose workdir is a bucket: `--workdir=gs://test-bucket/run` against a local GCS
emulator (gcp-storage-emulator, in this process on a free port: conftest.py's `gcs`).

data -> train_vae -> encode -> train (SIGTERM mid-run) -> train (resume) -> sample -> eval
all read and write the bucket; the same train and sample on a local copy of the inputs
give the same losses and the same videos; nothing lands under a local `./gs:` folder.

Each client in the subprocesses needs its own endpoint variable, set before it is
imported (docs/scaling.md); without one it waits for real GCS, so every run has a timeout.
"""
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = "gs://test-bucket/run"  # conftest.py's `gcs` fixture serves test-bucket
STEPS = 6
TINY = [
    "--config.data.num_train=16", "--config.data.num_val=4", "--config.data.batch_size=4",
    "--config.data.buckets=9x16x16,1x16x16",
    "--config.vae.base_dim=8", "--config.vae.z_dim=4", "--config.vae_train.batch_size=4",
    "--config.dit.dim=32", "--config.dit.ffn_dim=64", "--config.dit.num_heads=2",
    "--config.dit.num_layers=2", "--config.text.max_length=8",
    "--config.train.log_every=1", "--config.train.checkpoint_every=4",
    "--config.sample.steps=2", "--config.sample.height=16", "--config.sample.width=16",
    "--config.sample.num_frames=9", "--config.sample.batch_size=2",
    "--config.sample.prompt=a red circle moving left",
    "--config.eval.num_prompts=2", "--config.eval.num_vae_clips=2", "--config.eval.steps=2",
    "--config.eval.tasks=t2v",
]

pytestmark = pytest.mark.slow


def _command(workdir, *args):
  return [sys.executable, "-m", "sora_jax", f"--config={ROOT}/configs/shapes_tiny.py",
          f"--workdir={workdir}", *TINY, *args]


def _env(gcs_env):
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
              XLA_FLAGS="--xla_force_host_platform_device_count=1", **gcs_env)


def _sora(gcs_env, cwd, workdir, *args):
  r = subprocess.run(_command(workdir, *args), cwd=cwd, env=_env(gcs_env), capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, f"{args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
  return r.stdout


def _train_interrupted(gcs_env, cwd, workdir):
  """--mode=train, sent SIGTERM as soon as it says it starts; returns its output.

  The signal lands while the first step compiles (seconds), so the run stops after step
  1, off the checkpoint grid. Waiting for a later step's log line raced the run: a step
  of this tiny model takes milliseconds, and one CI run reached the scheduled save at
  step 4 before the signal arrived."""
  p = subprocess.Popen(_command(workdir, "--mode=train", f"--config.train.num_steps={STEPS}"),
                       cwd=cwd, env=_env(gcs_env), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
  lines, timer = [], threading.Timer(600, p.kill)
  timer.start()
  for line in p.stdout:
    lines.append(line)
    if "starting at step 0" in line:
      p.send_signal(signal.SIGTERM)
  p.wait()
  timer.cancel()
  assert p.returncode == 0, "".join(lines)[-4000:]
  return "".join(lines)


def _losses(workdir):
  from sora_jax.training import metrics  # pylint: disable=g-import-not-at-top
  rows = metrics.read_jsonl(f"{workdir}/metrics.jsonl")
  return [(r["step"], r["loss"]) for r in rows if r.get("mode") == "train" and "loss" in r]


def _videos(out_dir):
  """{file name: decoded frames} of the samples listed in samples.json."""
  import json  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  from sora_jax.data import video_io  # pylint: disable=g-import-not-at-top
  rows = json.loads(epath.Path(out_dir, "samples.json").read_text())
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    for r in rows:
      name = epath.Path(r["path"]).name
      local = epath.Path(tmp, name)
      local.write_bytes(epath.Path(r["path"]).read_bytes())
      out[name] = video_io.read_video(str(local))[0]
  return out


def test_bucket_workdir_runs_every_mode_like_a_local_one(gcs, tmp_path):
  from sora_jax import paths  # pylint: disable=g-import-not-at-top
  from sora_jax.training import checkpoint  # pylint: disable=g-import-not-at-top
  cwd = tmp_path / "cwd"  # where `./gs:` would appear if a path escaped the abstraction
  cwd.mkdir()
  _sora(gcs, cwd, RUN, "--mode=data")
  _sora(gcs, cwd, RUN, "--mode=train_vae", "--config.train.num_steps=1")
  _sora(gcs, cwd, RUN, "--mode=encode")

  # The local run starts from the same inputs (a copy of the bucket's).
  local = tmp_path / "local"
  paths.copy_tree(RUN, local)
  _sora(gcs, cwd, local, "--mode=train", f"--config.train.num_steps={STEPS}")
  _sora(gcs, cwd, local, "--mode=sample")

  out = _train_interrupted(gcs, cwd, RUN)
  paths.forget_listings(RUN)  # the subprocesses wrote the bucket since this process looked
  stopped = checkpoint.all_steps(f"{RUN}/checkpoints")
  assert len(stopped) == 1 and 1 <= stopped[0] < 4, (stopped, out[-3000:])  # off the grid
  _sora(gcs, cwd, RUN, "--mode=train", f"--config.train.num_steps={STEPS}")
  _sora(gcs, cwd, RUN, "--mode=sample")
  _sora(gcs, cwd, RUN, "--mode=eval")

  paths.forget_listings(RUN)
  ref, got = _losses(str(local)), _losses(RUN)
  assert [s for s, _ in ref] == list(range(1, STEPS + 1)) == [s for s, _ in got]
  np.testing.assert_allclose([l for _, l in got], [l for _, l in ref], rtol=1e-6)
  assert checkpoint.all_steps(f"{RUN}/checkpoints")[-1] == STEPS
  ref_videos, videos = _videos(local / "samples"), _videos(f"{RUN}/samples")
  assert sorted(videos) == sorted(ref_videos) and videos
  for name, frames in videos.items():
    np.testing.assert_array_equal(frames, ref_videos[name])
  import json  # pylint: disable=g-import-not-at-top
  report = json.loads(paths.path(f"{RUN}/eval.json").read_text())
  assert report["dit_step"] == STEPS and np.isfinite(report["vae"]["psnr"])
  assert not (cwd / "gs:").exists() and not os.path.exists(os.path.join(ROOT, "gs:"))
