"""Every mode of the entry point on a tiny config: data -> train_vae -> encode -> train ->
sample (every task) -> eval, plus exact resume of the DiT trainer.

One workdir is built once per session (module fixture) with tiny networks so compiles
stay short; the tests then check the properties users rely on.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from sora_jax.config_defaults import base_config
from sora_jax.training import checkpoint, metrics

TINY = [
    "--config.data.num_train=32", "--config.data.num_val=8", "--config.data.batch_size=4",
    "--config.data.buckets=9x16x16,1x16x16",
    "--config.vae.base_dim=8", "--config.vae.z_dim=4", "--config.vae_train.batch_size=4",
    "--config.dit.dim=32", "--config.dit.ffn_dim=64", "--config.dit.num_heads=2",
    "--config.dit.num_layers=2", "--config.text.max_length=8",
    "--config.train.log_every=1", "--config.train.checkpoint_every=2",
    "--config.train.tensorboard=False",
    "--config.sample.steps=2", "--config.sample.height=16", "--config.sample.width=16",
    "--config.sample.num_frames=9", "--config.sample.batch_size=2",
    "--config.eval.num_prompts=2", "--config.eval.num_vae_clips=2", "--config.eval.steps=2",
]


def tiny_config():
  """The same overrides as TINY, applied in-process."""
  cfg = base_config()
  for arg in TINY:
    key, value = arg[len("--config."):].split("=")
    section, field = key.split(".")
    old = cfg[section][field]
    cfg[section][field] = type(old)(value == "True") if isinstance(old, bool) else type(old)(value)
  return cfg


def sora(workdir, *args, check=True):
  r = subprocess.run([sys.executable, "-m", "sora_jax", "--config=configs/shapes_tiny.py",
                      f"--workdir={workdir}", *TINY, *args],
                     capture_output=True, text=True, timeout=900)
  if check and r.returncode:
    raise AssertionError(f"sora_jax {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
  return r


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("e2e"))
  sora(wd, "--mode=data")
  sora(wd, "--mode=train_vae", "--config.train.num_steps=4")
  sora(wd, "--mode=encode")
  sora(wd, "--mode=train", "--config.train.num_steps=4")
  return wd


def test_training_writes_metrics_and_checkpoints(workdir):
  rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  for mode in ("train_vae", "train"):
    steps = [r["step"] for r in rows if r["mode"] == mode and "loss" in r]
    assert steps == [1, 2, 3, 4], (mode, steps)
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
  assert any("val_psnr" in r for r in rows)
  _, step = checkpoint.load_params(os.path.join(workdir, "checkpoints"))
  assert step == 4


def test_encode_counts_truncated_captions(workdir):
  """text.max_length=8 cuts every caption: encode counts and records it (info.json)."""
  from sora_jax.data import encode  # pylint: disable=g-import-not-at-top
  info = encode.read_info(tiny_config(), workdir)
  for split in ("train", "validation"):
    for field in ("caption", "prompt"):
      report = info["truncated"][split][field]
      assert report["total"] == info["num_records"][split], (split, field, report)
      assert 0 < report["count"] <= report["total"] and report["longest"] > 8, report


def _curve(workdir, out, *args):
  r = subprocess.run([sys.executable, "scripts/adherence_curve.py", "--config=configs/shapes_tiny.py",
                      f"--workdir={workdir}", *TINY, "--num_prompts=1", "--steps=2", "--frames=9",
                      "--height=16", "--width=16", f"--out={out}", *args],
                     capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(out + ".json") as f:
    return json.load(f)["rows"]


def test_adherence_curve_scores_every_checkpoint(workdir, tmp_path):
  out = str(tmp_path / "curve")
  rows = _curve(workdir, out)
  steps = checkpoint.all_steps(os.path.join(workdir, "checkpoints"))
  assert [row["step"] for row in rows] == steps
  assert all(row["minutes"] is not None and row["vae_ceiling"]["n"] == 1 for row in rows)
  assert os.path.getsize(out + ".png") > 0
  # A warm-started run's curve continues the earlier one: its steps and minutes count on.
  more = _curve(workdir, str(tmp_path / "more"), f"--continues={out}.json", f"--every={steps[-1]}")
  assert more[:len(rows)] == [{**r, "stage": 0} for r in rows]
  last = more[-1]
  assert (last["stage"], last["stage_step"], last["step"]) == (1, steps[-1], 2 * steps[-1])
  assert last["minutes"] > rows[-1]["minutes"]


def test_caption_reliance_sees_whether_the_caption_is_used(workdir):
  import flax.linen as nn
  import jax
  from sora_jax.eval import caption_reliance
  from sora_jax.models import dit as dit_lib
  cfg = tiny_config()
  r = caption_reliance.for_workdir(cfg, workdir, ts=(0.5, 1.0))
  assert r["step"] == 4 and r["num_clips"] >= 2
  assert all(np.isfinite(list(e.values())).all() for e in r["by_t"].values())
  # A DiT with a live head uses its caption (ratio != 1); with both text paths cut off
  # (projected tokens and pooled caption zeroed) it cannot, and the ratio is exactly 1.
  batch = caption_reliance.validation_batch(cfg, workdir, 8)
  params = dit_lib.dit_from_config(cfg).init(jax.random.key(1), *dit_lib.example_inputs(cfg))
  params = jax.tree.map(np.asarray, nn.unbox(params["params"]))
  params["proj_out"]["kernel"] = np.random.default_rng(0).normal(
      size=params["proj_out"]["kernel"].shape).astype(np.float32)
  live = caption_reliance.measure(cfg, params, batch, ts=(0.9,))["0.9"]
  assert abs(live["ratio"] - 1.0) > 1e-3
  for name in ("text_embedder", "pooled_text_embedder"):
    mlp = params["condition_embedder"][name]["linear_2"]
    mlp["kernel"], mlp["bias"] = np.zeros_like(mlp["kernel"]), np.zeros_like(mlp["bias"])
  dead = caption_reliance.measure(cfg, params, batch, ts=(0.9,))["0.9"]
  assert dead["right"] == dead["shuffled"] and dead["ratio"] == 1.0
  # A v-predicting DiT is scored on its x0 estimate x_t - t * v, not on its raw output.
  cfg.diffusion.prediction = "v"
  x0 = batch["x0"]
  eps = np.random.default_rng(0).standard_normal(x0.shape).astype(np.float32)
  x_t = 0.1 * x0 + 0.9 * eps
  v = np.asarray(dit_lib.dit_from_config(cfg).apply(
      {"params": params}, x_t, np.full((len(x0),), 0.9, np.float32), batch["emb"], batch["mask"]))
  got = caption_reliance.measure(cfg, params, batch, ts=(0.9,))["0.9"]["right"]
  np.testing.assert_allclose(got, np.mean(np.square(x_t - 0.9 * v - x0)), rtol=1e-4)


def test_binding_probe_on_the_train_split_takes_clips_the_dit_trained_on(workdir):
  """split='train' probes two-object training clips: each caption is one that
  shapes_world renders from a training record's seed, and none is a validation clip's."""
  from sora_jax.data import shapes_world, tfds_shapes
  from sora_jax.eval import caption_reliance
  cfg = tiny_config()
  train = caption_reliance.binding_batch(cfg, workdir, 8, split="train")
  val = caption_reliance.binding_batch(cfg, workdir, 8)
  rendered = {shapes_world.generate_clip(tfds_shapes.clip_seed(cfg.data.seed, "train", i), 9, 16,
                                         16, cfg.data.two_object_fraction)["caption"]
              for i in range(cfg.data.num_train)}
  assert len(train["x0"]) >= 2 and train["x0"].shape[1:] == val["x0"].shape[1:]
  assert set(train["texts"]["caption"]) <= rendered
  assert not set(train["texts"]["caption"]) & set(val["texts"]["caption"])


def test_binding_probe_sees_whether_words_are_bound_to_their_object(workdir):
  import flax.linen as nn
  import jax
  from sora_jax.data import shapes_world as sw
  from sora_jax.eval import caption_reliance
  from sora_jax.models import dit as dit_lib
  cfg = tiny_config()
  batch = caption_reliance.binding_batch(cfg, workdir, 8)
  n = len(batch["x0"])
  assert n >= 2 and all(v.shape == (n,) for v in batch["valid"].values())
  params = dit_lib.dit_from_config(cfg).init(jax.random.key(1), *dit_lib.example_inputs(cfg))
  params = jax.tree.map(np.asarray, nn.unbox(params["params"]))
  params["proj_out"]["kernel"] = np.random.default_rng(0).normal(
      size=params["proj_out"]["kernel"].shape).astype(np.float32)
  live = caption_reliance.measure_binding(cfg, params, batch, ts=(0.9,), noise_draws=1)["0.9"]
  assert abs(live["shuffled"]["ratio"] - 1.0) > 1e-3
  assert live["order"]["clips"] == live["motion_other"]["clips"] == n  # every clip has both
  # The colour row against the x0 errors of a direct forward pass on the same noisy latents
  # (noise_draws=1: the first draw of default_rng(0)), over the clips whose colours differ.
  v = batch["valid"]["color"]
  eps = np.random.default_rng(0).standard_normal(batch["x0"].shape).astype(np.float32)
  x_t = 0.1 * batch["x0"] + 0.9 * eps
  dit = dit_lib.dit_from_config(cfg)
  clip_err = {k: np.square(np.asarray(dit.apply({"params": params}, x_t,
                                                np.full((n,), 0.9, np.float32), batch["emb"][k],
                                                batch["mask"][k])) - batch["x0"])
              .reshape(n, -1).mean(1) for k in ("right", "color", "motion")}
  err = {k: clip_err[k][v] for k in ("right", "color")}
  np.testing.assert_allclose(live["color"]["ratio"], err["color"].mean() / err["right"].mean(),
                             rtol=1e-4)
  assert live["color"]["clips"] == int(v.sum())
  # 'motion_moving': the 'motion' prompts, scored on the clips whose right prompt the parser
  # reads as two objects that move, differently; here on a subset set by hand (the fixture
  # has too few such clips), against a direct forward pass.
  parsed = [[o.get("motion") for o in sw.parse_prompt(p)["objects"]] for p in batch["texts"]["right"]]
  moving = np.array([m[0] != m[1] and "still" not in m for m in parsed])
  np.testing.assert_array_equal(batch["valid"]["motion_moving"], moving)
  subset = np.arange(n) >= n - 2
  sub = caption_reliance.measure_binding(cfg, params, dict(batch, valid=dict(
      batch["valid"], motion_moving=subset)), ts=(0.9,), noise_draws=1)["0.9"]["motion_moving"]
  err = {k: clip_err[k][subset] for k in ("right", "motion")}
  np.testing.assert_allclose(sub["ratio"], err["motion"].mean() / err["right"].mean(), rtol=1e-4)
  assert sub["clips"] == 2
  # cond_frames=1: frame 0 given clean at t = 0 (as image-to-video trains), the rest scored.
  frames = batch["x0"].shape[1]
  assert frames >= 2
  i2v = caption_reliance.measure_binding(cfg, params, batch, ts=(0.9,), noise_draws=1,
                                         cond_frames=1)["0.9"]
  x_c = x_t.copy()
  x_c[:, 0] = batch["x0"][:, 0]
  t_c = np.full((n, frames), 0.9, np.float32)
  t_c[:, 0] = 0.0
  err = {k: np.square(np.asarray(dit.apply({"params": params}, x_c, t_c, batch["emb"][k],
                                           batch["mask"][k])) - batch["x0"])[:, 1:]
         .reshape(n, -1).mean(1)[v] for k in ("right", "color")}
  np.testing.assert_allclose(i2v["color"]["ratio"], err["color"].mean() / err["right"].mean(),
                             rtol=1e-4)
  assert abs(i2v["color"]["ratio"] - live["color"]["ratio"]) > 1e-6
  with pytest.raises(ValueError, match=f"cond_frames={frames}"):
    caption_reliance.measure_binding(cfg, params, batch, ts=(0.9,), cond_frames=frames)
  # With both text paths cut off no prompt can matter: every ratio is exactly 1.
  for name in ("text_embedder", "pooled_text_embedder"):
    mlp = params["condition_embedder"][name]["linear_2"]
    mlp["kernel"], mlp["bias"] = np.zeros_like(mlp["kernel"]), np.zeros_like(mlp["bias"])
  dead = caption_reliance.measure_binding(cfg, params, batch, ts=(0.9,), noise_draws=1)["0.9"]
  assert all(r["ratio"] == 1.0 for k, r in dead.items() if isinstance(r, dict))


def test_dit_resume_is_exact(workdir, tmp_path):
  """4 steps straight == 2 steps, a restart, then 2 more (losses and parameters)."""
  other = str(tmp_path / "resumed")
  os.makedirs(other)
  shutil.copytree(os.path.join(workdir, "vae_checkpoints"), os.path.join(other, "vae_checkpoints"))
  shutil.copy(os.path.join(workdir, "latent_stats.json"), other)
  data = f"--config.data.data_dir={os.path.join(workdir, 'data')}"
  sora(other, "--mode=train", "--config.train.num_steps=2", data)
  sora(other, "--mode=train", "--config.train.num_steps=4", data)
  rows = lambda wd: [r for r in metrics.read_jsonl(os.path.join(wd, "metrics.jsonl"))
                     if r["mode"] == "train"]
  # Training losses, and the held-out evaluation of the same weights after each segment.
  for key in ("loss", "eval_loss"):
    straight = [r[key] for r in rows(workdir) if key in r]
    resumed = [r[key] for r in rows(other) if key in r]
    assert resumed == straight and straight, key
  a, _ = checkpoint.load_params(os.path.join(workdir, "checkpoints"), use_ema=False)
  b, _ = checkpoint.load_params(os.path.join(other, "checkpoints"), use_ema=False)
  for x, y in zip(jax_leaves(a), jax_leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_training_on_data_encoded_with_other_text_slots_is_refused(workdir):
  """Data encoded without clause tokens cannot train a DiT configured with them (its
  sampler would hand it slots it never saw): one line naming both figures and the fix."""
  from sora_jax.config_check import ConfigError  # pylint: disable=g-import-not-at-top
  from sora_jax.training import train  # pylint: disable=g-import-not-at-top
  cfg = tiny_config()
  cfg.text.clause_tokens = 2
  with pytest.raises(ConfigError, match=r"has 8 text slots .* = 10; .*re-encode") as e:
    train.make_trainer(cfg, workdir)
  assert "\n" not in str(e.value)


def _encode_dirs(workdir, tmp_path):
  """(data_dir, workdir) under tmp_path for an encode of other settings: the data dir
  links the module workdir's ShapesWorld source, the workdir its VAE checkpoints."""
  data, wd = tmp_path / "data", tmp_path / "wd"
  data.mkdir()
  (data / "shapes_world").symlink_to(os.path.join(workdir, "data", "shapes_world"))
  wd.mkdir()
  (wd / "vae_checkpoints").symlink_to(os.path.join(workdir, "vae_checkpoints"))
  return data, wd


def test_binding_negatives_are_the_swapped_texts_and_train(workdir, tmp_path):
  """--mode=encode with data.binding_negatives stores, per clip and field, the text
  encoder's states of shapes_world.swap_subjects(text, spec, data.binding_swap) (the
  text's own where there is none); --mode=train with diffusion.binding_weight trains on
  them and logs the contrast; data without them is refused in one line."""
  from sora_jax.config_check import ConfigError  # pylint: disable=g-import-not-at-top
  from sora_jax.data import encode, shapes_world  # pylint: disable=g-import-not-at-top
  from sora_jax.models import text_encoder  # pylint: disable=g-import-not-at-top
  from sora_jax.training import train  # pylint: disable=g-import-not-at-top
  cfg = tiny_config()
  cfg.diffusion.binding_weight = 0.5
  with pytest.raises(ConfigError, match=r"binding_weight=0.5 .* lacks; .*binding_negatives=True") as e:
    train.make_trainer(cfg, workdir)
  assert "\n" not in str(e.value)

  data, wd = _encode_dirs(workdir, tmp_path)
  flags = [f"--config.data.data_dir={data}", "--config.data.binding_negatives=True",
           "--config.data.binding_swap=object"]
  sora(str(wd), "--mode=encode", *flags)
  cfg.data.data_dir = str(data)
  assert encode.read_info(cfg, str(wd))["binding_swap"] == "object"
  src = encode.data_source(cfg, str(wd), "train")[0]
  text = text_encoder.load_text_encoder(cfg)
  valid = 0
  for i in range(len(src)):
    rec = src[i]
    for field, (e, m, v) in encode.NEGATIVE_KEYS.items():
      own = rec[field].decode() if isinstance(rec[field], bytes) else rec[field]
      swapped = shapes_world.swap_subjects(own, json.loads(rec["spec"]), "object")
      assert bool(rec[v]) == (swapped is not None)
      want_emb, want_mask = text([own if swapped is None else swapped])
      np.testing.assert_array_equal(rec[m], np.asarray(want_mask[0]))
      np.testing.assert_allclose(rec[e].astype(np.float32), np.asarray(want_emb[0]),
                                 rtol=2e-3, atol=2e-3)
      valid += int(rec[v])
  assert valid > 4, valid
  r = sora(str(wd), "--mode=train", "--config.train.num_steps=2", *flags,
           "--config.diffusion.binding_weight=0.5", "--config.diffusion.binding_t_min=0")
  rows = [r for r in metrics.read_jsonl(str(wd / "metrics.jsonl")) if "binding_gap" in r]
  assert rows and all(np.isfinite(r["binding_loss"]) for r in rows), r.stdout[-2000:]


def test_motion_labels_are_encoded_per_clip_and_train_the_motion_head(workdir, tmp_path):
  """--mode=encode with data.motion_labels stores, per clip, shapes_world.motion_label_map
  of its source video on the VAE's latent grid; --mode=train with diffusion.motion_weight
  warm-started from a DiT without the head adds it and logs the motion terms; data without
  the labels is refused in one line."""
  from sora_jax.config_check import ConfigError  # pylint: disable=g-import-not-at-top
  from sora_jax.data import build, encode, shapes_world  # pylint: disable=g-import-not-at-top
  from sora_jax.training import train  # pylint: disable=g-import-not-at-top
  cfg = tiny_config()
  cfg.dit.motion_head, cfg.diffusion.motion_weight = True, 0.5
  with pytest.raises(ConfigError, match=r"motion_weight=0.5 .* lacks; .*motion_labels=True") as e:
    train.make_trainer(cfg, workdir)
  assert "\n" not in str(e.value)

  data, wd = _encode_dirs(workdir, tmp_path)
  flags = [f"--config.data.data_dir={data}", "--config.data.motion_labels=True"]
  sora(str(wd), "--mode=encode", *flags)
  cfg.data.data_dir = str(data)
  assert encode.read_info(cfg, str(wd))["motion_labels"]
  got = encode.data_source(cfg, str(wd), "train")[0]
  src = build.source_builder(cfg, str(data)).as_data_source(split="train")
  assert len(got) == len(src)
  for i in range(len(src)):
    video = np.asarray(src[i]["video"])
    want = shapes_world.motion_label_map(video, json.loads(src[i]["spec"]), 4, 4)
    assert got[i]["motion_labels"].shape == (*got[i]["latent_mean"].shape[:3], want.shape[-1])
    np.testing.assert_allclose(got[i]["motion_labels"].astype(np.float32), want, atol=1e-3)
  r = sora(str(wd), "--mode=train", "--config.train.num_steps=2", *flags,
           "--config.dit.motion_head=True", "--config.diffusion.motion_weight=0.5",
           f"--config.train.init_from={workdir}")
  assert "dit.motion_head is new" in r.stdout, r.stdout[-2000:]
  rows = [r for r in metrics.read_jsonl(str(wd / "metrics.jsonl")) if "motion_loss" in r]
  assert rows and all(np.isfinite(r["motion_loss"]) and r["motion_loss"] > 0 for r in rows)


def test_init_from_warm_starts_from_a_workdirs_ema(workdir):
  """train.init_from: the new run's params and EMA are the source's EMA, at step 0, sharded
  over a data=2 x fsdp=2 mesh; a DiT of other shapes is refused with the reason."""
  import jax  # pylint: disable=g-import-not-at-top
  from sora_jax.config_check import ConfigError  # pylint: disable=g-import-not-at-top
  from sora_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from sora_jax.training import train  # pylint: disable=g-import-not-at-top

  def trainer(cfg):
    return train.make_trainer(cfg, workdir, mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:4]))

  cfg = tiny_config()
  cfg.mesh.data, cfg.mesh.fsdp = 2, 2
  cfg.train.init_from = workdir
  state = trainer(cfg).init_state()
  source, _ = checkpoint.load_params(os.path.join(workdir, "checkpoints"), use_ema=True)
  assert int(state["step"]) == 0
  for key in ("params", "ema"):
    got = jax_leaves(state[key])
    assert len(got) == len(jax_leaves(source))
    for x, y in zip(got, jax_leaves(source)):
      np.testing.assert_array_equal(np.asarray(x), y)
  # A text refiner the source lacks is added at its init: the other parameters are the
  # source's and the warm-started DiT computes what the source computes.
  from sora_jax.models import dit as dit_lib  # pylint: disable=g-import-not-at-top
  cfg.dit.text_refiner_layers = 2
  refined = jax.device_get(trainer(cfg).init_state()["params"])
  assert set(refined) == set(source) | {"text_refiner"}
  for x, y in zip(jax_leaves({k: refined[k] for k in source}), jax_leaves(source)):
    np.testing.assert_array_equal(x, y)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4, 4, cfg.vae.z_dim)).astype(np.float32)
  t = np.array([0.3, 0.9], np.float32)
  text = rng.normal(size=(2, 5, cfg.text.dim)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  out = dit_lib.dit_from_config(cfg).apply({"params": refined}, x, t, text, mask)
  cfg.dit.text_refiner_layers = 0
  ref = dit_lib.dit_from_config(cfg).apply({"params": source}, x, t, text, mask)
  assert np.abs(np.asarray(ref)).max() > 0
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6, atol=1e-6)
  cfg.dit.ffn_dim = 48
  with pytest.raises(ConfigError, match="does not fit this config's DiT"):
    trainer(cfg).init_state()


def jax_leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.leaves(tree)


@pytest.fixture(scope="module")
def pipe(workdir):
  from sora_jax.sampling.sample import VideoPipeline  # pylint: disable=g-import-not-at-top
  return VideoPipeline(tiny_config(), workdir)


@pytest.fixture(scope="module")
def clip():
  from sora_jax.data import shapes_world  # pylint: disable=g-import-not-at-top
  return shapes_world.generate_clip(3, 9, 16, 16)["video"]


KW = dict(steps=2, cfg_scale=3.0)


@pytest.mark.parametrize("task, frames, expect_frames", [
    ("t2v", 9, 9), ("t2i", 9, 1), ("loop", 9, 9), ("long", 21, 21)])
def test_unconditioned_task_shapes(pipe, task, frames, expect_frames):
  out = pipe.run_task(task, ["a red circle", "a blue square"], [0, 1], frames, 16, 16,
                      long_window=9, long_overlap=5, **KW)
  assert out.shape == (2, expect_frames, 16, 16, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("height, width", [(16, 24), (24, 16)])
def test_widescreen_and_vertical(pipe, height, width):
  out = pipe.run_task("t2v", ["a red circle"], [0], 9, height, width, **KW)
  assert out.shape == (1, 9, height, width, 3)


def _reconstruct(pipe, frames_FHWC):
  return pipe.decode(pipe.encode(frames_FHWC[None]))[0].astype(int)


def test_i2v_and_interpolate_reproduce_given_frames(pipe, clip):
  image = clip[0]
  recon = _reconstruct(pipe, image[None])[0]
  out = pipe.run_task("i2v", ["a"], [0], 9, 16, 16, image=image, **KW)[0]
  # Latent frame 0 is held clean and the decoder is causal: frame 0 is the image's reconstruction.
  assert np.abs(out[0].astype(int) - recon).max() <= 1
  out = pipe.run_task("interpolate", ["a"], [0], 9, 16, 16, image=image, end_image=clip[-1], **KW)[0]
  assert np.abs(out[0].astype(int) - recon).max() <= 1
  out = pipe.run_task("loop", ["a"], [0], 9, 16, 16, image=image, **KW)[0]  # loop's input
  assert np.abs(out[0].astype(int) - recon).max() <= 1


def test_extend_keeps_the_clip_and_adds_frames(pipe, clip):
  fwd = pipe.run_task("extend", ["a"], [0], 9, 16, 16, video=clip, cond_frames=5, **KW)[0]
  assert fwd.shape[0] == len(clip) + 9 - 5
  np.testing.assert_array_equal(fwd[:len(clip)], clip)
  back = pipe.run_task("extend_backward", ["a"], [0], 9, 16, 16, video=clip, cond_frames=5, **KW)[0]
  np.testing.assert_array_equal(back[-len(clip):], clip)
  assert back.shape[0] > len(clip)


def test_edit_strength_zero_returns_the_reconstruction(pipe, clip):
  out = pipe.run_task("edit", ["a"], [0], 9, 16, 16, video=clip, strength=0.0, **KW)[0]
  assert np.abs(out.astype(int) - _reconstruct(pipe, clip)).max() <= 1


def test_same_seed_same_video_and_seeds_differ(pipe):
  a = pipe.run_task("t2v", ["a red circle", "a red circle"], [5, 6], 9, 16, 16, **KW)
  again = pipe.run_task("t2v", ["a red circle", "a red circle"], [5, 6], 9, 16, 16, **KW)
  np.testing.assert_array_equal(a, again)  # Same call, same numbers, bit for bit.
  # A seed's noise does not depend on its batch; XLA may reduce in another order for
  # another batch size, which can move a pixel by one uint8 level after rounding.
  b = pipe.run_task("t2v", ["a red circle"], [5], 9, 16, 16, **KW)
  diff = np.abs(a[0].astype(int) - b[0].astype(int))
  assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
  assert not np.array_equal(a[0], a[1])


def test_long_draws_each_samples_noise_from_its_own_seed(pipe):
  """One window of `long` is the t2v sample of the same seeds (each sample's own noise)."""
  prompts = ["a red circle", "a red circle"]
  long = pipe.run_task("long", prompts, [5, 6], 9, 16, 16, long_window=9, long_overlap=5, **KW)
  np.testing.assert_array_equal(long, pipe.run_task("t2v", prompts, [5, 6], 9, 16, 16, **KW))


def test_sample_mode_writes_videos_and_index(workdir, tmp_path):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a red circle moving left\nun carré bleu\n", encoding="utf-8")
  out = tmp_path / "samples"
  sora(workdir, "--mode=sample", f"--config.sample.prompts_file={prompts}",
       f"--config.sample.output_dir={out}", "--config.sample.seed=7")
  rows = json.loads((out / "samples.json").read_text())
  assert [r["prompt"] for r in rows] == ["a red circle moving left", "un carré bleu"]
  for r, seed in zip(rows, (7, 8)):
    assert (r["task"], r["seed"], r["frames"], r["height"], r["width"]) == ("t2v", seed, 9, 16, 16)
    assert os.path.getsize(r["path"]) > 0 and r["path"].endswith(".mp4")
    assert os.path.exists(r["gif"])


def test_jobs_file_samples_every_job_in_one_run(workdir, tmp_path):
  """sample.jobs_file: each line's fields over the command's, one samples.json for all."""
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a red circle moving left\na blue square falling\n", encoding="utf-8")
  jobs = tmp_path / "jobs.jsonl"
  jobs.write_text("\n".join(json.dumps(j) for j in [
      {"task": "t2v", "prompts_file": str(prompts)},
      {"task": "t2i", "prompt": "a green triangle", "width": 24, "seed": 40, "gif": False},
      {"task": "long", "prompt": "a white circle", "num_frames": 13, "long_window": 9,
       "shift": 3.0}]) + "\n", encoding="utf-8")
  out = tmp_path / "samples"
  r = sora(workdir, "--mode=sample", f"--config.sample.jobs_file={jobs}",
           f"--config.sample.output_dir={out}", "--config.sample.seed=7")
  assert "job 3/3" in r.stdout
  rows = json.loads((out / "samples.json").read_text())
  got = [(r["task"], r["prompt"], r["seed"], r["frames"], r["height"], r["width"]) for r in rows]
  assert got == [("t2v", "a red circle moving left", 7, 9, 16, 16),
                 ("t2v", "a blue square falling", 8, 9, 16, 16),
                 ("t2i", "a green triangle", 40, 1, 16, 24),
                 ("long", "a white circle", 7, 13, 16, 16)]
  assert len({r["path"] for r in rows}) == 4 and all(os.path.getsize(r["path"]) for r in rows)
  assert ["gif" in r for r in rows] == [True, True, False, True]


def test_shift_argument_sets_the_schedule(pipe):
  """run_task(shift=...) is sample.shift: None follows the config, a value overrides it."""
  from sora_jax.diffusion import schedules  # pylint: disable=g-import-not-at-top
  rule = schedules.sample_shift(pipe.cfg, schedules.num_tokens((3, 4, 4), pipe.cfg.dit.patch_size))
  base = pipe.run_task("t2v", ["a red circle"], [0], 9, 16, 16, **KW)
  np.testing.assert_array_equal(pipe.run_task("t2v", ["a red circle"], [0], 9, 16, 16,
                                              shift=rule, **KW), base)
  np.testing.assert_array_equal(pipe.run_task("t2v", ["a red circle"], [0], 9, 16, 16,
                                              shift=-1.0, **KW), base)
  assert not np.array_equal(pipe.run_task("t2v", ["a red circle"], [0], 9, 16, 16,
                                          shift=rule * 4, **KW), base)


def test_sample_refuses_an_impossible_size_before_compiling(workdir):
  r = sora(workdir, "--mode=sample", "--config.sample.height=20", check=False)
  assert r.returncode == 2 and "height=20" in r.stderr


def test_eval_writes_its_figures(workdir):
  sora(workdir, "--mode=eval")
  with open(os.path.join(workdir, "eval.json")) as f:
    e = json.load(f)
  assert 0 < e["vae"]["psnr"] < 100
  a = e["adherence"]
  assert a["ground_truth"]["match"] >= 0.5  # the ceiling on real clips
  assert set(a["model"]) >= {"match", "color", "shape", "size", "motion"}
  assert 0.0 <= a["vae_ceiling"]["match"] <= 1.0 and a["vae_ceiling"]["n"] == a["model"]["n"]
  for k in ("i2v_first_frame_psnr", "extend_seam_abs_diff", "interpolate_end_psnr",
            "loop_closure_abs_diff"):
    assert np.isfinite(e["tasks"][k])


def test_dit_logs_a_held_out_loss_that_any_recipe_can_compare(workdir):
  """train.eval_every=0 evaluates at each checkpoint (steps 2, 4): the velocity MSE on fixed
  validation batches per train.eval_timesteps, and on training batches."""
  import jax  # pylint: disable=g-import-not-at-top
  from sora_jax.data import encode  # pylint: disable=g-import-not-at-top
  from sora_jax.models import weights  # pylint: disable=g-import-not-at-top
  from sora_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from sora_jax.training import train  # pylint: disable=g-import-not-at-top
  rows = [r for r in metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if r["mode"] == "train" and "eval_loss" in r]
  assert [r["step"] for r in rows] == [2, 4]
  ts = (0.1, 0.3, 0.5, 0.7, 0.9)
  for r in rows:
    per_t = [r[f"eval_loss_t{t:g}"] for t in ts]
    assert np.all(np.isfinite(per_t)) and np.isfinite(r["eval_loss_train"])
    np.testing.assert_allclose(r["eval_loss"], np.mean(per_t), rtol=1e-6)

  def figures(cfg, state):
    stats = weights.latent_stats(cfg, workdir)
    trainer = train.make_trainer(cfg, workdir, mesh_lib.make_mesh(cfg.mesh, jax.devices()[:1]))
    batches = encode.fixed_batches(cfg, workdir, "validation", cfg.train.eval_clips)
    state = state if state is not None else trainer.init_state()
    return trainer.eval_losses(state, trainer.eval_to_device(batches)), batches, stats

  cfg = tiny_config()
  # The logged figure of step 4 is what its checkpointed EMA weights score.
  ema, _ = checkpoint.load_params(os.path.join(workdir, "checkpoints"), use_ema=True)
  logged, _, _ = figures(cfg, {"ema": ema})
  np.testing.assert_allclose(logged, [rows[-1][f"eval_loss_t{t:g}"] for t in ts], rtol=1e-5)
  # Independent reference: a fresh DiT's zero head predicts x0 = 0, so its velocity error is
  # -x0 / t and its MSE is E[x0^2] / t^2 over the fixed validation clips.
  fresh, batches, (mu, sigma) = figures(cfg, None)
  # Every clip weighs the same whatever its bucket (video or image).
  x0_sq = np.concatenate([np.mean(((b["latent_mean"][b["mask"]] - mu) / sigma) ** 2,
                                  axis=(1, 2, 3, 4)) for b in batches])
  assert len(x0_sq) == 8  # The whole validation split (data.num_val) and nothing twice.
  np.testing.assert_allclose(fresh, np.mean(x0_sq) / np.square(ts), rtol=1e-5)
  # The same weights score the same under another recipe's seeds, data order and loss weight.
  other = tiny_config()
  other.seed, other.data.shuffle_seed, other.diffusion.x0_loss_t_clip = 7, 7, 1.0
  np.testing.assert_allclose(figures(other, {"ema": ema})[0], logged, rtol=1e-6)
  # ... and the same clips with the same noise at another batch size (5 clips: padding rows
  # and rows past them masked out).
  for batch_size in (8, 4):
    fewer = tiny_config()
    fewer.data.batch_size, fewer.train.eval_clips = batch_size, 5
    five, batches, _ = figures(fewer, {"ema": ema})
    assert sum(int(b["mask"].sum()) for b in batches) == 5
    if batch_size == 8:
      five_at_8 = five
  np.testing.assert_allclose(five, five_at_8, rtol=1e-5)
  assert not np.allclose(five, logged, rtol=1e-3)  # 5 of the 8 clips are another figure.


def test_heldout_gap_splits_the_clips_by_object_count(workdir, tmp_path):
  """scripts/heldout_gap.py --objects=N scores the clips of N objects only: per split the
  counts the generator's own specs give, and the two scores weighted by their counts are
  the score of every clip."""
  from sora_jax.data import shapes_world, tfds_shapes
  cfg = tiny_config()
  # The video bucket (9x16x16 clips: 3x4x4 latents) holds validation records 0-3.
  want = [len(shapes_world.generate_clip(tfds_shapes.clip_seed(cfg.data.seed, "validation", i),
                                         9, 16, 16, cfg.data.two_object_fraction)
              ["spec"]["objects"]) for i in range(4)]
  got = {}
  for n in (0, 1, 2):
    out = str(tmp_path / f"gap{n}.json")
    r = subprocess.run([sys.executable, "scripts/heldout_gap.py", "--config=configs/shapes_tiny.py",
                        f"--workdir={workdir}", *TINY, "--seen=8", "--clips=8", "--bucket=3x4x4",
                        f"--objects={n}", f"--out={out}"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out) as f:
      got[n] = json.load(f)
  assert got[0]["validation"]["clips"] == 4
  for n in (1, 2):
    assert got[n].get("validation", {"clips": 0})["clips"] == want.count(n), (n, want)
    assert got[n]["seen"]["clips"] + got[n]["unseen"]["clips"] <= 16
  for split in ("seen", "unseen", "validation"):
    parts = [got[n][split] for n in (1, 2) if split in got[n]]
    assert sum(p["clips"] for p in parts) == got[0][split]["clips"], split
    np.testing.assert_allclose(
        sum(p["clips"] * p["eval_loss"] for p in parts) / got[0][split]["clips"],
        got[0][split]["eval_loss"], rtol=1e-5)
