"""Every sampling task keeps its given frames exactly and samples the rest consistently."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.diffusion import schedules
from sora_jax.diffusion import solvers
from sora_jax.diffusion import toy
from sora_jax.sampling import tasks

B, HWC = 2, (2, 2, 3)
KEYS = jax.random.split(jax.random.key(0), B)  # one per sample
STEPS = 8
# Still videos: given any clean frame, the right answer is that frame everywhere.
MODEL = toy.static_video_denoiser(std=1.0)


def _latents(t, seed):
  return jax.random.normal(jax.random.key(seed), (B, t, *HWC))


def _run(plan, seed=0, solver="heun"):
  noise = jax.random.normal(jax.random.key(100 + seed), plan.cond_latents_BTHWC.shape)
  sig = schedules.sigmas(STEPS, 1.0, start=plan.start)
  return solvers.sample(MODEL, noise, plan.cond_latents_BTHWC, plan.cond_mask_BT, sig,
                        solver=solver)


def test_pixel_latent_frame_mapping():
  assert [tasks.latent_frames(f) for f in (1, 5, 17, 81)] == [1, 2, 5, 21]
  assert [tasks.pixel_frames(t) for t in (1, 2, 5, 21)] == [1, 5, 17, 81]
  assert tasks.latent_frames(9, temporal=2) == 5
  with pytest.raises(ValueError, match="use 13"):
    tasks.latent_frames(16)
  px = jnp.arange(8.0).reshape(1, 8, 1, 1, 1)
  clip = tasks.group_clip(px)
  assert clip.shape[1] == 9 and float(clip[0, 0, 0, 0, 0]) == 0.0  # first frame in front
  assert tasks.latent_frames(clip.shape[1]) == 3  # latent 0 dropped -> 2 groups of 4
  with pytest.raises(ValueError, match="multiple of 4"):
    tasks.group_clip(px[:, :6])


def _plans():
  img, end = _latents(1, 1), _latents(1, 3)
  ctx = jnp.broadcast_to(_latents(1, 2), (B, 2, *HWC))  # context of a still clip
  return {
      "t2v": (tasks.t2v(B, 5, HWC), []),
      "t2i": (tasks.t2i(B, HWC), []),
      "i2v": (tasks.i2v(img, 5), [0]),
      "extend": (tasks.extend(ctx, 5), [0, 1]),
      "extend_backward": (tasks.extend_backward(ctx, 5), [3, 4]),
      "interpolate": (tasks.interpolate(ctx, end, 6), [0, 1, 5]),
      "loop": (tasks.loop(img, 5), [0, 4]),
      "edit": (tasks.edit(_latents(5, 4), 0.6), []),
  }


@pytest.mark.parametrize("task", list(_plans()))
def test_given_frames_come_out_exactly(task):
  plan, given = _plans()[task]
  t = plan.num_latent_frames
  assert plan.cond_latents_BTHWC.shape == (B, t, *HWC) and plan.cond_mask_BT.shape == (B, t)
  np.testing.assert_array_equal(np.flatnonzero(np.asarray(plan.cond_mask_BT[0])), given)
  out = np.asarray(_run(plan))
  assert out.shape == (B, t, *HWC) and np.isfinite(out).all()
  m = np.asarray(plan.cond_mask_BT)
  np.testing.assert_array_equal(out[m], np.asarray(plan.cond_latents_BTHWC)[m])
  if given and task != "interpolate":  # one still scene given: it must fill every frame
    np.testing.assert_allclose(out, np.broadcast_to(out[:, given[:1]], out.shape), atol=1e-4)


def test_extension_places_the_context_at_the_right_end():
  ctx = _latents(2, 5)
  fwd = np.asarray(_run(tasks.extend(ctx, 5)))
  bwd = np.asarray(_run(tasks.extend_backward(ctx, 5)))
  np.testing.assert_array_equal(fwd[:, :2], ctx)  # continue after the context
  np.testing.assert_array_equal(bwd[:, 3:], ctx)  # lead up to it
  assert not np.allclose(fwd[:, 2:], 0) and not np.allclose(bwd[:, :3], 0)


def test_loop_two_passes_close_the_loop():
  first = _run(tasks.t2i(B, HWC), seed=1)  # pass 1: one latent frame from noise
  out = np.asarray(_run(tasks.loop(first, 5), seed=2))  # pass 2: first and last tied to it
  closure = np.abs(out[:, -1] - out[:, 0]).max()
  assert closure == 0.0
  np.testing.assert_array_equal(out[:, 0], np.asarray(first)[:, 0])
  # the free frames join the ends smoothly: for still videos, they all equal them.
  np.testing.assert_allclose(out, np.broadcast_to(out[:, :1], out.shape), atol=1e-4)
  closing = _latents(1, 6)
  out = np.asarray(_run(tasks.loop(first, 5, closing_B1HWC=closing)))
  np.testing.assert_array_equal(out[:, -1], np.asarray(closing)[:, 0])


def test_edit_strength_to_zero_returns_the_input():
  np.testing.assert_array_equal(_run(tasks.edit(_latents(3, 7), 0.0)), _latents(3, 7))
  # Off the data (a still video here) the optimal denoiser snaps even tiny noise back to
  # the data, so "returns its input" is for a clip the model could have made.
  clip = jnp.broadcast_to(_latents(1, 7), (B, 3, *HWC))
  assert float(jnp.abs(_run(tasks.edit(clip, 1e-3)) - clip).max()) < 1e-2
  far = float(jnp.abs(_run(tasks.edit(clip, 0.9)) - clip).max())
  assert far > 0.1  # a strong edit does change the clip


class _Window:
  """A jitted window sampler that records what each call saw."""

  def __init__(self):
    self.calls, self.traces = [], 0

    def fn(noise, lat, mask):
      self.traces += 1
      return solvers.sample(MODEL, noise, lat, mask, schedules.sigmas(4, 1.0), solver="euler")

    self.jitted = jax.jit(fn)

  def __call__(self, noise, lat, mask):
    self.calls.append((noise.shape, np.asarray(lat), np.asarray(mask)))
    return self.jitted(noise, lat, mask)


@pytest.mark.parametrize("total", [3, 5, 8, 12])
def test_long_video_by_windowed_extension(total):
  window, overlap = 5, 2
  win = _Window()
  first = tasks.i2v(_latents(1, 8), window)
  chunks = list(tasks.iter_long(win, KEYS, total, first, overlap))
  out = tasks.sample_long(win, KEYS, total, first, overlap)
  assert out.shape == (B, total, *HWC)
  calls = win.calls[:len(chunks)]
  assert len(chunks) == 1 + math.ceil(max(0, total - window) / (window - overlap))
  # one window shape, one compile: device memory does not depend on the length
  assert {c[0] for c in win.calls} == {(B, window, *HWC)} and win.traces == 1
  assert all(isinstance(z, np.ndarray) and z.shape == (B, window, *HWC) for z, _ in chunks)
  for (prev, _), (_, lat, mask), (cur, new) in zip(chunks, calls[1:], chunks[1:]):
    np.testing.assert_array_equal(mask[0], np.arange(window) < overlap)
    np.testing.assert_array_equal(lat[:, :overlap], prev[:, -overlap:])  # overlap = last frames
    np.testing.assert_array_equal(cur[:, :overlap], prev[:, -overlap:])  # reproduced exactly
    assert new.start == overlap
  np.testing.assert_array_equal(out, np.concatenate([z[:, s] for z, s in chunks], axis=1))
  # the still scene given in the first window persists to the end
  np.testing.assert_allclose(out, np.broadcast_to(out[:, :1], out.shape), atol=1e-4)


def test_long_sample_depends_only_on_its_own_key():
  """Sample i of a batch is the sample its key gives alone (sample.seed + i, for `long` too)."""
  two = tasks.sample_long(_Window(), KEYS, 8, tasks.t2v(B, 5, HWC), 2)
  one = tasks.sample_long(_Window(), KEYS[1:], 8, tasks.t2v(1, 5, HWC), 2)
  np.testing.assert_allclose(two[1:], one, atol=1e-6)
  assert not np.allclose(two[0], two[1], atol=1e-3)
  with pytest.raises(ValueError, match="one key per sample"):
    tasks.sample_long(_Window(), KEYS[:1], 8, tasks.t2v(B, 5, HWC), 2)


def test_long_context_fn_decides_the_context():
  win = _Window()
  first = tasks.t2v(B, 4, HWC)
  out = tasks.sample_long(win, KEYS, 7, first, overlap=1,
                          context_fn=lambda z: z[:, -2:] * 0 + 1.0)
  assert out.shape == (B, 7, *HWC)
  np.testing.assert_array_equal(win.calls[1][1][:, :2], np.ones((B, 2, *HWC)))


def test_impossible_plans_are_refused_with_the_fix():
  ctx = _latents(3, 9)
  with pytest.raises(ValueError, match="ask for more frames"):
    tasks.extend(ctx, 3)
  with pytest.raises(ValueError, match="ask for more frames"):
    tasks.interpolate(ctx, ctx, 6)
  with pytest.raises(ValueError, match="use extend"):
    tasks.i2v(ctx, 5)
  with pytest.raises(ValueError, match="do not fit"):
    tasks.interpolate(_latents(1, 1), jnp.zeros((B, 1, 4, 4, 3)), 5)
  with pytest.raises(ValueError, match="overlap"):
    list(tasks.iter_long(_Window(), jax.random.key(0), 9, tasks.t2v(B, 4, HWC), 4))
  with pytest.raises(ValueError, match="strength"):
    tasks.edit(ctx, 1.5)
