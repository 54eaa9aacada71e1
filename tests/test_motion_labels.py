"""Dense motion supervision (data.motion_labels, dit.motion_head, diffusion.motion_weight):
the label map against the objects' own masks and a per-pixel loop, its loss against a
float64 reference, and the train step's motion term against the same step without it."""
import sys
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.data import shapes_world as sw
from sora_jax.training import benchmark, train

sys.path.insert(0, os.path.dirname(__file__))
from test_binding import (BATCH, LATENT, TEXT_LEN, _assert_head_trains_the_blocks,  # noqa: E402
                          _assert_output_layer_as_plain, _by_name, _cfg, _trainer)

K = len(sw.MOTIONS)
BG = sw.MOTION_CLASSES.index("background")


def _motion_cfg(weight, noise_pass=False):
  """test_binding's tiny config with a motion head, the term at `weight`, no clipping."""
  cfg = _cfg(0.0)
  cfg.train.grad_clip, cfg.dit.motion_head, cfg.diffusion.motion_weight = 0.0, True, weight
  cfg.diffusion.motion_noise_pass = noise_pass
  return cfg


def test_motion_label_map_counts_each_objects_pixels():
  """A one-object clip: per latent frame, the object's motion covers exactly its mask's
  pixels in each frame of the cell's group (object_side / shape_mask, not colours), the
  background the rest; no other class appears. Latent frame 0 is frame 0 alone."""
  checked = set()
  for seed in range(40):
    clip = sw.generate_clip(seed, 17, 32, 32, two_object_fraction=0.0)
    (obj,) = clip["spec"]["objects"]
    labels = sw.motion_label_map(clip["video"], clip["spec"], 4, 4)
    assert labels.shape == (5, 8, 8, len(sw.MOTION_CLASSES)) and labels.dtype == np.float32
    area = sw.shape_mask(obj["shape"], sw.object_side(obj["size"], 32, 32)).sum()
    m = sw.MOTIONS.index(obj["motion"])
    pixels = labels.sum(axis=(1, 2)) * 16  # (5, classes): pixels per frame of the group
    np.testing.assert_allclose(pixels[:, m], area, rtol=1e-5)
    np.testing.assert_allclose(pixels[:, BG], 32 * 32 - area, rtol=1e-5)
    others = [c for c in range(len(sw.MOTION_CLASSES)) if c not in (m, BG)]
    assert np.all(labels[..., others] == 0)
    checked.add(obj["motion"])
  assert len(checked) >= 5, checked
  # A still image (T = 1): one latent frame, every object 'still'.
  image = sw.generate_clip(3, 1, 32, 32, two_object_fraction=1.0)
  labels = sw.motion_label_map(image["video"], image["spec"], 4, 4)
  assert labels.shape == (1, 8, 8, len(sw.MOTION_CLASSES))
  area = sum(sw.shape_mask(o["shape"], sw.object_side(o["size"], 32, 32)).sum()
             for o in image["spec"]["objects"])
  still = labels[..., sw.MOTIONS.index("still")].sum() * 16
  assert 0 < still <= area and still + labels[..., BG].sum() * 16 == pytest.approx(32 * 32)


def test_motion_label_map_follows_a_per_pixel_loop_and_refuses_other_videos():
  """Two-object clips: every cell's shares equal a plain loop over its pixels (frame 0
  alone, then frames 4i-3 .. 4i) that names each pixel's object by colour; a pixel of no
  spec colour, or a clip that does not fold into cells, is a clear error."""
  for seed in (1, 2, 3):
    clip = sw.generate_clip(seed, 9, 16, 24, two_object_fraction=1.0)
    video, spec = clip["video"], clip["spec"]
    got = sw.motion_label_map(video, spec, 4, 4)
    want = np.zeros((3, 4, 6, len(sw.MOTION_CLASSES)))
    colours = {tuple(sw.COLORS[o["color"]]): sw.MOTIONS.index(o["motion"]) for o in spec["objects"]}
    for i, frames in enumerate([[0], [1, 2, 3, 4], [5, 6, 7, 8]]):
      for y in range(4):
        for x in range(6):
          for f in frames:
            for py in range(4 * y, 4 * y + 4):
              for px in range(4 * x, 4 * x + 4):
                want[i, y, x, colours.get(tuple(video[f, py, px]), BG)] += 1
          want[i, y, x] /= 16 * len(frames)
    np.testing.assert_allclose(got, want, atol=1e-6)
  bad = video.copy()
  bad[3, 2, 2] = (1, 2, 3)
  with pytest.raises(ValueError, match="1 pixels have none of the spec's colours"):
    sw.motion_label_map(bad, spec, 4, 4)
  with pytest.raises(ValueError, match="does not fold into cells"):
    sw.motion_label_map(video[:8], spec, 4, 4)


def _reference_loss(logits, labels, cond, patch, keep=None):
  """float64 loops: per token, the patch's mean shares; target = motion shares / object
  share, weight = object share on frames not given clean."""
  pt, ph, pw = patch
  b, f, gh, gw, k = logits.shape
  num = ce_sum = kl_sum = hit_sum = 0.0
  for n in range(b):
    if keep is not None and not keep[n]:
      continue
    for i in range(f):
      if cond[n, i * pt:(i + 1) * pt].any():
        continue
      for y in range(gh):
        for x in range(gw):
          cell = labels[n, i * pt:(i + 1) * pt, y * ph:(y + 1) * ph, x * pw:(x + 1) * pw]
          shares = cell.reshape(-1, k + 1).astype(np.float64).mean(0)
          w = 1.0 - shares[k]
          if w <= 0:
            continue
          target = shares[:k] / w
          z = logits[n, i, y, x].astype(np.float64)
          logp = z - z.max() - np.log(np.exp(z - z.max()).sum())
          ce = -(target * logp).sum()
          ent = -sum(p * np.log(p) for p in target if p > 0)
          num += w
          ce_sum += w * ce
          kl_sum += w * (ce - ent)
          hit_sum += w * float(np.argmax(z) == np.argmax(target))
  return ce_sum / num, kl_sum / num, hit_sum / num


def test_motion_label_loss_matches_a_float64_reference():
  rng = np.random.default_rng(7)
  b, t, h, w = 3, 4, 4, 6
  labels = rng.dirichlet(np.ones(K + 1), size=(b, t, h, w)).astype(np.float16)
  labels[0, :, :2] = np.eye(K + 1, dtype=np.float16)[BG]  # background only: weighs nothing
  cond = np.zeros((b, t), bool)
  cond[1, 0] = cond[2, :2] = True
  logits = rng.normal(0, 2, (b, t, h // 2, w // 2, K)).astype(np.float32)
  got = train.motion_label_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(cond),
                                (1, 2, 2))
  want = _reference_loss(logits, labels, cond, (1, 2, 2))
  np.testing.assert_allclose([float(v) for v in got], want, rtol=1e-4)
  keep = np.array([True, False, True])  # diffusion.motion_t_min leaves sample 1 out
  got = train.motion_label_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(cond),
                                (1, 2, 2), jnp.asarray(keep))
  want_kept = _reference_loss(logits, labels, cond, (1, 2, 2), keep)
  np.testing.assert_allclose([float(v) for v in got], want_kept, rtol=1e-4)
  assert abs(want_kept[0] - want[0]) > 1e-3
  # Its gradient reaches neither given frames nor background-only tokens.
  g = np.asarray(jax.grad(lambda z: train.motion_label_loss(
      z, jnp.asarray(labels), jnp.asarray(cond), (1, 2, 2))[0])(jnp.asarray(logits)))
  assert np.all(g[1, 0] == 0) and np.all(g[2, :2] == 0) and np.all(g[0, :, 0] == 0)
  assert np.all(np.abs(g[2, 2:]).sum(-1) > 0)
  # An exact head: KL 0, accuracy 1 (one motion per token).
  onehot = np.zeros((1, 1, 2, 2, K + 1), np.float32)
  onehot[0, 0, 0, :, 2] = 0.25
  onehot[0, 0, 0, :, BG] = 0.75
  onehot[0, 0, 1, :, BG] = 1.0
  exact = np.full((1, 1, 1, 1, K), -30.0, np.float32)
  exact[..., 2] = 30.0
  ce, kl, acc = train.motion_label_loss(jnp.asarray(exact), jnp.asarray(onehot),
                                        jnp.zeros((1, 1), bool), (1, 2, 2))
  assert float(kl) < 1e-6 and float(acc) == 1.0


def test_motion_weight_adds_the_heads_cross_entropy_and_leaves_the_output_layer():
  """diffusion.motion_weight: the loss is the plain loss + weight * the head's cross-entropy
  from the same forward pass (no draw changes); its gradient reaches the head and the
  shared blocks and leaves the output layer (proj_out, scale_shift_table) with exactly the
  plain step's gradient. Without the weight the head gets none; image batches get no term."""
  cfg_of = _motion_cfg
  host = benchmark.synthetic_batch(cfg_of(0.5), BATCH, LATENT, TEXT_LEN, seed=3)
  plain, want = _trainer(cfg_of(0.0))(host, grads=True)
  got, grads = _trainer(cfg_of(0.5))(host, grads=True)
  want, grads = _by_name(want), _by_name(grads)
  assert "motion_loss" not in plain and got["motion_loss"] > 0
  np.testing.assert_allclose(got["loss"], plain["loss"] + 0.5 * got["motion_loss"], rtol=1e-5)
  assert 0.0 <= got["motion_acc"] <= 1.0 and 0.0 < got["motion_kl"] < got["motion_loss"]
  _assert_head_trains_the_blocks(want, grads, "motion_head", 1e-4)
  image_latent = (1, *LATENT[1:])
  image = benchmark.synthetic_batch(cfg_of(0.5), BATCH, image_latent, TEXT_LEN, seed=3)
  assert "motion_loss" not in _trainer(cfg_of(0.5), image_latent)(image)


def test_the_probe_scores_the_motion_head_with_the_right_and_the_exchanged_prompt():
  """caption_reliance.measure_motion_head: per t, each clip's accuracy is
  train.motion_label_loss's on that clip alone (frame 0 given), averaged over the
  'motion_moving' clips only; the same text under both names scores alike, and a
  different one does not."""
  from sora_jax.eval import caption_reliance  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(__file__))
  from test_dit import random_params, tiny_cfg  # pylint: disable=g-import-not-at-top
  cfg = tiny_cfg(motion_head=True)
  model, params = random_params(cfg)
  rng = np.random.default_rng(5)
  n, t_len = 5, 3
  labels = rng.dirichlet(np.ones(K + 1), size=(n, t_len, 4, 4)).astype(np.float32)
  right = rng.standard_normal((n, 6, 16)).astype(np.float32)
  batch = {"x0": rng.standard_normal((n, t_len, 4, 4, 4)).astype(np.float32),
           "emb": {"right": right, "motion": right.copy()},
           "mask": {"right": np.ones((n, 6), bool), "motion": np.ones((n, 6), bool)},
           "valid": {"motion_moving": np.array([1, 0, 1, 1, 0], bool)},
           "motion_labels": labels}
  got = caption_reliance.measure_motion_head(cfg, params, batch, ts=(0.9,), noise_draws=1,
                                             cond_frames=1)["0.9"]
  assert got["clips"] == 3 and got["right"] == pytest.approx(got["motion"])
  eps = np.random.default_rng(0).standard_normal(batch["x0"].shape).astype(np.float32)
  x_t = np.concatenate([batch["x0"][:, :1], 0.1 * batch["x0"][:, 1:] + 0.9 * eps[:, 1:]], 1)
  t_BT = np.tile(np.array([0.0, 0.9, 0.9], np.float32), (n, 1))
  logits = model.apply({"params": params}, x_t, t_BT, right, np.ones((n, 6), bool),
                       return_motion=True)[1]
  cond = np.tile(np.array([True, False, False]), (n, 1))
  want = [float(train.motion_label_loss(logits[i:i + 1], labels[i:i + 1], cond[i:i + 1],
                                        (1, 2, 2))[2]) for i in (0, 2, 3)]
  assert got["right"] == pytest.approx(np.mean(want), abs=1e-5)
  batch["emb"]["motion"] = rng.standard_normal((n, 6, 16)).astype(np.float32)
  other = caption_reliance.measure_motion_head(cfg, params, batch, ts=(0.9,), noise_draws=1,
                                               cond_frames=1)["0.9"]
  assert other["right"] == pytest.approx(got["right"]) and other["motion"] != got["motion"]


def test_the_noise_pass_scores_the_head_on_frame_0_and_pure_noise():
  """diffusion.motion_noise_pass: the loss is the plain loss + weight * the motion term, the
  plain part untouched (output layer gradient as the plain step's); the term does not move
  when the clips' later frames change (they are pure noise there) and moves when frame 0
  does."""
  cfg_of = lambda weight: _motion_cfg(weight, noise_pass=True)
  host = benchmark.synthetic_batch(cfg_of(0.5), BATCH, LATENT, TEXT_LEN, seed=3)
  plain, want = _trainer(cfg_of(0.0))(host, grads=True)
  run = _trainer(cfg_of(0.5))
  got, grads = run(host, grads=True)
  np.testing.assert_allclose(got["loss"], plain["loss"] + 0.5 * got["motion_loss"], rtol=1e-5)
  _assert_output_layer_as_plain(_by_name(want), _by_name(grads))
  later = dict(host, latent_mean=host["latent_mean"].copy())
  later["latent_mean"][:, 1:] += 3.0
  assert run(later)["motion_loss"] == pytest.approx(got["motion_loss"], rel=1e-5)
  first = dict(host, latent_mean=host["latent_mean"].copy())
  first["latent_mean"][:, :1] += 3.0
  assert abs(run(first)["motion_loss"] - got["motion_loss"]) > 1e-4
