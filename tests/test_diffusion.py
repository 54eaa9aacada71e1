"""Rectified-flow maths, the training loss, timestep distribution, conditioning masks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax import config_check
from sora_jax.config_defaults import base_config
from sora_jax.diffusion import loss as loss_lib
from sora_jax.diffusion import masks
from sora_jax.diffusion import rectified_flow as rf
from sora_jax.diffusion import schedules

SHAPE = (3, 4, 2, 2, 2)  # B, T, H, W, C


def _data(seed=0):
  k0, k1, k2 = jax.random.split(jax.random.key(seed), 3)
  x0 = jax.random.normal(k0, SHAPE)
  eps = jax.random.normal(k1, SHAPE)
  t_BT = jax.random.uniform(k2, SHAPE[:2])
  return x0, eps, t_BT


def test_interpolation_endpoints_and_velocity_is_the_path_derivative():
  x0, eps, t_BT = _data()
  zeros, ones = jnp.zeros(SHAPE[:2]), jnp.ones(SHAPE[:2])
  np.testing.assert_array_equal(rf.interpolate(x0, eps, zeros), x0)
  np.testing.assert_array_equal(rf.interpolate(x0, eps, ones), eps)
  h = 1e-2
  fd = (rf.interpolate(x0, eps, t_BT + h) - rf.interpolate(x0, eps, t_BT - h)) / (2 * h)
  np.testing.assert_allclose(fd, rf.velocity_target(x0, eps), atol=1e-4)


def test_prediction_conversions_round_trip_and_stay_finite_at_t0_t1():
  x0, eps, t_BT = _data()
  t_BT = t_BT.at[0, 0].set(0.0).at[0, 1].set(1.0)
  x_t = rf.interpolate(x0, eps, t_BT)
  v = rf.velocity_target(x0, eps)
  np.testing.assert_allclose(rf.to_x0(v, x_t, t_BT, "v"), x0, atol=1e-5)
  np.testing.assert_array_equal(rf.to_x0(x0, x_t, t_BT, "x0"), x0)
  v_from_x0 = rf.to_velocity(x0, x_t, t_BT, "x0")
  assert bool(jnp.isfinite(v_from_x0).all())
  away = (t_BT > 1e-2)[:, :, None, None, None]  # x0 -> v loses precision as t -> 0
  np.testing.assert_allclose(jnp.where(away, v_from_x0, v), v, atol=1e-4)
  np.testing.assert_allclose(v_from_x0[0, 1], v[0, 1], atol=1e-5)  # exact at t = 1
  with pytest.raises(ValueError, match="prediction"):
    rf.to_x0(x0, x_t, t_BT, "eps")


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_loss_is_zero_for_the_exact_model(prediction):
  x0, eps, _ = _data()
  t_B = jnp.array([0.01, 0.5, 0.99])
  cond_BT = jnp.array([[True, False, False, False], [False] * 4, [True, True, False, True]])

  def oracle(x_t, t_BT, cond):
    return x0 if prediction == "x0" else eps - x0

  loss, per_sample = loss_lib.rf_loss(oracle, x0, t_B, eps, cond_BT, prediction)
  assert per_sample.shape == (3,)
  assert float(loss) == 0.0


def test_conditioned_frames_are_clean_at_t0_and_out_of_the_loss():
  x0, eps, _ = _data()
  t_B = jnp.array([0.3, 0.6, 0.9])
  cond_BT = jnp.array([[True, False, False, False], [False] * 4, [True, True, False, True]])
  seen = {}

  def spy(x_t, t_BT, cond):
    seen.update(x_t=x_t, t=t_BT, cond=cond)
    # exact velocity on free frames, garbage on conditioned ones
    return jnp.where(cond_BT[:, :, None, None, None], 1e3, eps - x0)

  loss, _ = loss_lib.rf_loss(spy, x0, t_B, eps, cond_BT, "v", cond="text")
  assert float(loss) == 0.0
  assert seen["cond"] == "text"
  np.testing.assert_array_equal(seen["t"], jnp.where(cond_BT, 0.0, t_B[:, None]))
  m = np.asarray(cond_BT)
  np.testing.assert_array_equal(np.asarray(seen["x_t"])[m], np.asarray(x0)[m])


def test_loss_is_velocity_mse_over_free_frames():
  x0, eps, _ = _data()
  t_B = jnp.array([0.2, 0.5, 0.8])
  cond_BT = jnp.array([[True, False, False, False], [False] * 4, [False, False, True, True]])
  loss, per_sample = loss_lib.rf_loss(lambda x, t, c: jnp.zeros_like(x), x0, t_B, eps, cond_BT, "v")
  se_BT = np.mean(np.square(np.asarray(eps - x0)), axis=(2, 3, 4))
  free = ~np.asarray(cond_BT)
  want = (se_BT * free).sum(1) / free.sum(1)
  np.testing.assert_allclose(per_sample, want, rtol=1e-5)
  np.testing.assert_allclose(loss, want.mean(), rtol=1e-5)

  # x0-prediction is scored by the same velocity error (t above the clip).
  x0_guess = x0 + 0.1
  t_BT = jnp.where(cond_BT, 0.0, t_B[:, None])
  x_t = rf.interpolate(x0, eps, t_BT)
  v_err = rf.to_velocity(x0_guess, x_t, t_BT, "x0") - (eps - x0)
  loss_x0, _ = loss_lib.rf_loss(lambda x, t, c: x0_guess, x0, t_B, eps, cond_BT, "x0")
  want_x0 = ((np.mean(np.square(np.asarray(v_err)), axis=(2, 3, 4)) * free).sum(1) / free.sum(1))
  np.testing.assert_allclose(loss_x0, want_x0.mean(), rtol=1e-4)


def test_x0_loss_t_clip_one_is_the_plain_x0_mse():
  """t_clip = 1 (diffusion.x0_loss_t_clip) weighs the x0 error by 1 at every t; the default
  clip weighs it by 1/t^2 (the velocity loss), so the two differ by exactly that factor."""
  x0, eps, _ = _data()
  t_B = jnp.array([0.2, 0.5, 0.8])
  cond_BT = jnp.zeros(SHAPE[:2], bool)
  x0_guess = x0 + 0.1 * eps
  fn = lambda x, t, c: x0_guess
  _, per_x0 = loss_lib.rf_loss(fn, x0, t_B, eps, cond_BT, "x0", t_clip=1.0)
  _, per_v = loss_lib.rf_loss(fn, x0, t_B, eps, cond_BT, "x0")
  mse = np.mean(np.square(np.asarray(x0_guess - x0)), axis=(1, 2, 3, 4))
  np.testing.assert_allclose(per_x0, mse, rtol=1e-5)
  np.testing.assert_allclose(per_v, mse / np.square(np.asarray(t_B)), rtol=1e-4)
  cfg = base_config()
  cfg.diffusion.x0_loss_t_clip = 0.0
  with pytest.raises(config_check.ConfigError, match="x0_loss_t_clip"):
    config_check.check(cfg, "train")


def test_timesteps_logit_normal_with_resolution_shift():
  cfg = base_config().diffusion
  cfg.shift, cfg.shift_base_tokens, cfg.t_mean, cfg.t_std = 1.0, 256, 0.0, 1.0
  rng = jax.random.key(1)
  t = np.asarray(schedules.sample_timesteps(rng, 20000, 256, cfg))
  assert t.shape == (20000,) and t.dtype == np.float32 and (t > 0).all() and (t < 1).all()
  assert abs(np.median(t) - 0.5) < 0.01 and abs(t.mean() - 0.5) < 0.01
  # 4x the tokens -> shift 2 -> median shift(0.5) = 2/3.
  assert schedules.resolution_shift(cfg, 1024) == pytest.approx(2.0)
  t4 = np.asarray(schedules.sample_timesteps(rng, 20000, 1024, cfg))
  assert abs(np.median(t4) - 2 / 3) < 0.01
  np.testing.assert_allclose(t4, schedules.shift_time(t, 2.0), rtol=1e-5)  # same draw, shifted
  cfg.shift_resolution_dependent = False
  cfg.shift = 3.0
  t3 = np.asarray(schedules.sample_timesteps(rng, 20000, 1024, cfg))
  assert abs(np.median(t3) - 0.75) < 0.01
  cfg.t_mean = 1.0  # mean of the logit moves the median to sigmoid(1) before the shift
  cfg.shift = 1.0
  t_m = np.asarray(schedules.sample_timesteps(rng, 20000, 256, cfg))
  assert abs(np.median(t_m) - jax.nn.sigmoid(1.0)) < 0.01


def test_t_top_frac_draws_that_share_uniform_at_the_top():
  """diffusion.t_top_frac: the other samples keep their logit-normal draws; the share at
  or above t_top is t_top_frac + (1 - t_top_frac) * the logit-normal's own share there,
  and the top draws are uniform in [t_top, 1)."""
  cfg = base_config().diffusion
  rng = jax.random.key(2)
  base = np.asarray(schedules.sample_timesteps(rng, 40000, 80, cfg))
  cfg.t_top_frac, cfg.t_top = 0.25, 0.95
  t = np.asarray(schedules.sample_timesteps(rng, 40000, 80, cfg))
  moved = t != base
  assert abs(moved.mean() - 0.25) < 0.01
  top = t[moved]
  assert top.min() >= 0.95 and top.max() < 1.0 and abs(top.mean() - 0.975) < 0.001
  want = 0.25 + 0.75 * (base >= 0.95).mean()
  assert abs((t >= 0.95).mean() - want) < 0.01
  bad = base_config()
  bad.diffusion.t_top_frac = 1.0
  with pytest.raises(config_check.ConfigError, match="t_top_frac=1.0 and t_top=0.95 must be"):
    config_check.check(bad, "train")


def test_num_tokens_and_sample_shift_rule():
  cfg = base_config()
  assert schedules.num_tokens((5, 8, 8), (1, 2, 2)) == 80
  cfg.sample.shift = -1.0
  assert schedules.sample_shift(cfg, 1024) == schedules.resolution_shift(cfg.diffusion, 1024)
  cfg.sample.shift = 5.0
  assert schedules.sample_shift(cfg, 1024) == 5.0


def _masks_of(kind, batch=512, frames=6, seed=0):
  return np.asarray(masks.sample_cond_mask(jax.random.key(seed), batch, frames, {kind: 1.0}))


def test_cond_mask_types():
  b, t = 512, 6
  idx = np.arange(t)
  assert _masks_of("none").shape == (b, t) and not _masks_of("none").any()
  first = _masks_of("first")
  assert (first[:, 0]).all() and not first[:, 1:].any()
  fl = _masks_of("first_last")
  assert fl[:, 0].all() and fl[:, -1].all() and not fl[:, 1:-1].any()
  for kind in ("first_k", "last_k", "random"):
    m = _masks_of(kind)
    k = m.sum(1)
    assert k.min() == 1 and k.max() == t - 1  # at least one frame given, one left
    assert set(k) == set(range(1, t))  # every k in [1, T-1] occurs
    if kind == "first_k":
      np.testing.assert_array_equal(m, idx[None] < k[:, None])
    if kind == "last_k":
      np.testing.assert_array_equal(m, idx[None] >= t - k[:, None])
  rnd = _masks_of("random")
  assert rnd[:, 1:-1].any(axis=1).mean() > 0.5  # not only prefixes/suffixes
  assert rnd.mean(0).min() > 0.35  # every position gets conditioned


def test_cond_mask_mixture_follows_config_probabilities():
  probs = config_check.parse_weights("none=0.5,first=0.25,first_last=0.25", config_check.COND_MASKS)
  m = np.asarray(masks.sample_cond_mask(jax.random.key(3), 8000, 5, probs))
  count = m.sum(1)
  assert abs((count == 0).mean() - 0.5) < 0.03
  assert abs((count == 1).mean() - 0.25) < 0.03
  assert abs((count == 2).mean() - 0.25) < 0.03
  default = config_check.parse_weights(base_config().diffusion.cond_masks, config_check.COND_MASKS)
  m = np.asarray(masks.sample_cond_mask(jax.random.key(4), 64, 5, default))
  assert (m.sum(1) < 5).all()
  with pytest.raises(ValueError, match="unknown conditioning masks"):
    masks.sample_cond_mask(jax.random.key(0), 2, 5, {"middle": 1.0})


def test_images_and_two_frame_clips_keep_a_frame_to_learn():
  for kind in config_check.COND_MASKS:
    assert not _masks_of(kind, frames=1).any()  # T=1: text-to-image whatever the type
    assert (_masks_of(kind, frames=2).sum(1) <= 1).all()
  np.testing.assert_array_equal(_masks_of("first_last", frames=2), _masks_of("first", frames=2))


def test_drop_captions_gives_the_null_text():
  emb = jnp.ones((400, 3, 4))
  mask = jnp.ones((400, 3), bool).at[:, 2].set(False)
  e, m = masks.drop_captions(jax.random.key(0), emb, mask, 0.0)
  np.testing.assert_array_equal(e, emb)
  np.testing.assert_array_equal(m, mask)
  e, m = masks.drop_captions(jax.random.key(0), emb, mask, 1.0)
  null_e, null_m = masks.null_text(emb, mask)
  np.testing.assert_array_equal(e, null_e)
  np.testing.assert_array_equal(m, null_m)
  assert not null_e.any() and not null_m.any()
  e, m = masks.drop_captions(jax.random.key(0), emb, mask, 0.25)
  dropped = ~np.asarray(m).any(1)
  assert abs(dropped.mean() - 0.25) < 0.07
  assert not np.asarray(e)[dropped].any() and np.asarray(e)[~dropped].all()
  np.testing.assert_array_equal(np.asarray(m)[~dropped], np.asarray(mask)[~dropped])
  # an encoded empty prompt as the null text
  null = (jnp.full((3, 4), 0.5), jnp.array([True, False, False]))
  e, m = masks.drop_captions(jax.random.key(0), emb, mask, 1.0, null=null)
  np.testing.assert_array_equal(e, jnp.broadcast_to(null[0], emb.shape))
  np.testing.assert_array_equal(m, jnp.broadcast_to(null[1], mask.shape))
