"""Causal video VAE: causality, chunked == whole clip, shapes, and input errors."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.config_defaults import base_config
from sora_jax.models.vae import (WanVAE, decode_chunked, encode_chunked, init_variables,
                                 latent_shape, vae_from_config)

TINY = WanVAE(base_dim=8, z_dim=4, dim_mult=(1, 2, 2), num_res_blocks=1,
              temporal_downsample=(True, True), chunk_frames=2)


@pytest.fixture(scope="module")
def variables():
  return nn.unbox(init_variables(TINY, jax.random.key(0)))


def _video(key, t, h=16, w=24):
  return jax.random.uniform(jax.random.key(key), (1, t, h, w, 3), minval=-1.0, maxval=1.0)


_encode = jax.jit(lambda v, x: TINY.apply(v, x, method=WanVAE.encode))
_decode = jax.jit(lambda v, z: TINY.apply(v, z, method=WanVAE.decode))


def test_encoding_is_causal(variables):
  """Latent frame i depends only on pixel frames <= 4i: later frames never change it."""
  x = _video(1, 13)
  mean, logvar = _encode(variables, x)
  for t, lt in ((1, 1), (5, 2)):  # An image is the first frame of its video.
    mean_t, logvar_t = _encode(variables, x[:, :t])
    np.testing.assert_allclose(mean_t, mean[:, :lt], atol=1e-5)
    np.testing.assert_allclose(logvar_t, logvar[:, :lt], atol=1e-5)
  future_changed, _ = _encode(variables, x.at[:, 9:].set(_video(2, 4)))
  np.testing.assert_allclose(future_changed[:, :3], mean[:, :3], atol=1e-5)
  assert np.abs(future_changed[:, 3] - mean[:, 3]).max() > 1e-3  # Those frames do matter.


def test_decoding_is_causal(variables):
  z = jax.random.normal(jax.random.key(3), (1, 4, 4, 6, 4))
  full = _decode(variables, z)
  np.testing.assert_allclose(_decode(variables, z[:, :2]), full[:, :5], atol=1e-5)
  np.testing.assert_allclose(_decode(variables, z[:, :1]), full[:, :1], atol=1e-5)


def test_chunked_equals_whole_clip(variables):
  x = _video(1, 13)  # 3 latent frames after the first, in chunks of 2: a scan step + a tail.
  mean, logvar = _encode(variables, x)
  mean_c, logvar_c, _ = encode_chunked(TINY, variables, x)
  np.testing.assert_allclose(mean_c, mean, atol=1e-5)
  np.testing.assert_allclose(logvar_c, logvar, atol=1e-5)
  z = jax.random.normal(jax.random.key(3), (1, 4, 4, 6, 4))
  video_c, _ = decode_chunked(TINY, variables, z)
  assert video_c.shape == x.shape
  np.testing.assert_allclose(video_c, _decode(variables, z), atol=1e-5)


def test_streaming_with_explicit_cache(variables):
  """A clip fed in two calls, carrying the returned cache, encodes/decodes as one."""
  x = _video(1, 13)
  mean, _ = _encode(variables, x)
  m1, _, cache = encode_chunked(TINY, variables, x[:, :5])
  m2, _, _ = encode_chunked(TINY, variables, x[:, 5:], cache)
  np.testing.assert_allclose(jnp.concatenate([m1, m2], 1), mean, atol=1e-5)
  z = jax.random.normal(jax.random.key(3), (1, 4, 4, 6, 4))
  v1, cache = decode_chunked(TINY, variables, z[:, :2])
  v2, _ = decode_chunked(TINY, variables, z[:, 2:], cache)
  np.testing.assert_allclose(jnp.concatenate([v1, v2], 1), _decode(variables, z), atol=1e-5)


def test_resample_shortcuts_stay_causal_and_chunkable():
  """Wan-2.2-style shortcuts: same shapes, still causal, chunked == whole clip."""
  vae = WanVAE(base_dim=8, z_dim=4, dim_mult=(1, 2, 2), num_res_blocks=1,
               temporal_downsample=(True, True), chunk_frames=2, resample_shortcuts=True)
  v = nn.unbox(init_variables(vae, jax.random.key(0)))
  assert jax.tree.structure(v) == jax.tree.structure(  # parameter-free: same checkpoint tree
      nn.unbox(init_variables(TINY, jax.random.key(0))))
  encode = jax.jit(lambda v, x: vae.apply(v, x, method=WanVAE.encode))
  decode = jax.jit(lambda v, z: vae.apply(v, z, method=WanVAE.decode))
  x = _video(1, 13)
  mean, _ = encode(v, x)
  np.testing.assert_allclose(encode(v, x[:, :5])[0], mean[:, :2], atol=1e-5)
  np.testing.assert_allclose(encode_chunked(vae, v, x)[0], mean, atol=1e-5)
  z = jax.random.normal(jax.random.key(3), (1, 4, 4, 6, 4))
  video = decode(v, z)
  assert video.shape == x.shape
  np.testing.assert_allclose(decode_chunked(vae, v, z)[0], video, atol=1e-5)
  # The shortcut changes the function (it is not a no-op).
  assert np.abs(video - _decode(v, z)).max() > 1e-3


@pytest.mark.parametrize("frames", [1, 5, 17])
def test_shapes(variables, frames):
  h, w = 16, 32
  x = jax.ShapeDtypeStruct((2, frames, h, w, 3), jnp.float32)
  lt = 1 + (frames - 1) // 4
  mean, logvar = jax.eval_shape(lambda v, x: TINY.apply(v, x, method=WanVAE.encode), variables, x)
  assert mean.shape == logvar.shape == (2, lt, h // 4, w // 4, 4) == (2,) + TINY.latent_shape(frames, h, w)
  video = jax.eval_shape(lambda v, z: TINY.apply(v, z, method=WanVAE.decode), variables, mean)
  assert video.shape == x.shape and TINY.video_shape(lt, h // 4, w // 4) == x.shape[1:]
  recon, m, lv = jax.eval_shape(lambda v, x: TINY.apply(v, x, jax.random.key(0)), variables, x)
  assert recon.shape == x.shape and m.shape == lv.shape == mean.shape


def test_config_helpers():
  cfg = base_config()
  vae = vae_from_config(cfg)
  s = 2 ** (len(cfg.vae.dim_mult) - 1)
  assert latent_shape(cfg, 17, 32, 48) == (5, 32 // s, 48 // s, cfg.vae.z_dim)
  assert vae.latent_shape(1, 32, 32)[0] == 1  # Images are 1-frame videos.


def test_logvar_init_sets_the_initial_posterior_variance():
  """A fresh encoder's log-variance starts near vae.logvar_init, its mean unshifted."""
  cfg = base_config()
  cfg.vae.base_dim, cfg.vae.z_dim = 8, 4
  x = _video(3, 5, 8, 8)
  # logvar_init only sets an initializer: one compiled encoder serves both configs.
  encoder = vae_from_config(cfg)
  encode = jax.jit(lambda v, x: encoder.apply(v, x, method=WanVAE.encode))
  for init in (0.0, -6.0):
    cfg.vae.logvar_init = init
    vae = vae_from_config(cfg)
    v = nn.unbox(jax.jit(lambda k, vae=vae: init_variables(vae, k))(jax.random.key(0)))
    bias = np.asarray(v["params"]["quant_conv"]["bias"])
    np.testing.assert_array_equal(bias, [0.0] * 4 + [init] * 4)
    mean, logvar = encode(v, x)
    assert abs(float(jnp.mean(logvar)) - init) < 1.0, (init, float(jnp.mean(logvar)))


@pytest.mark.parametrize("shape, match", [
    ((1, 4, 16, 16, 3), r"1\+4k.*use 1 or 5"),
    ((1, 6, 16, 16, 3), r"1\+4k.*use 5 or 9"),
    ((1, 5, 18, 16, 3), r"height=18 is not a multiple of 4.*16 or 20"),
    ((1, 5, 16, 30, 3), r"width=30 is not a multiple of 4"),
    ((1, 5, 16, 16, 1), r"\(B, T, H, W, 3\)"),
])
def test_bad_input_is_a_clear_error(variables, shape, match):
  with pytest.raises(ValueError, match=match):
    TINY.apply(variables, jnp.zeros(shape), method=WanVAE.encode)


def test_bad_chunk_is_a_clear_error(variables):
  with pytest.raises(ValueError, match="multiple of 4 frames, got 3"):
    encode_chunked(TINY, variables, _video(6, 3), cache={"encoder": {}})
  with pytest.raises(ValueError, match="chunk_frames=0"):
    decode_chunked(TINY, variables, jnp.zeros((1, 2, 4, 4, 4)), chunk_frames=0)


def test_random_window_is_a_grid_aligned_slice():
  """vae_train.max_frames / crop_size: the training window is a 1+4k run of frames and a
  square crop on the spatial factor's grid, cut from the batch unchanged."""
  from sora_jax.training.train_vae import random_window
  x = jnp.arange(2 * 17 * 32 * 48 * 1, dtype=jnp.float32).reshape(2, 17, 32, 48, 1)
  seen = set()
  for seed in range(12):
    out = np.asarray(random_window(x, jax.random.key(seed), 9, 16, 4))
    assert out.shape == (2, 9, 16, 16, 1)
    t0, y0, x0 = np.argwhere(np.asarray(x)[0, ..., 0] == out[0, 0, 0, 0, 0])[0]
    assert y0 % 4 == 0 and x0 % 4 == 0 and t0 + 9 <= 17
    np.testing.assert_array_equal(out, np.asarray(x)[:, t0:t0 + 9, y0:y0 + 16, x0:x0 + 16])
    seen.add((t0, y0, x0))
  assert len(seen) > 6  # the offsets vary with the key
  # 0 (and sizes at least the frame) keep whole frames; a crop larger than one side keeps it.
  np.testing.assert_array_equal(random_window(x, jax.random.key(0), 0, 0, 4), x)
  assert random_window(x, jax.random.key(0), 0, 40, 4).shape == (2, 17, 32, 40, 1)
