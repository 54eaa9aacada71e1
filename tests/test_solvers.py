"""Euler/Heun solve the flow ODE to the known answer; guidance and SDEdit behave as promised."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.diffusion import schedules
from sora_jax.diffusion import solvers
from sora_jax.diffusion import toy

SHAPE = (2, 3, 4, 4, 2)
MEAN, STD = 0.5, 0.3


def _noise(seed=0, shape=SHAPE):
  return jax.random.normal(jax.random.key(seed), shape)


def _none_given(shape=SHAPE):
  return jnp.zeros(shape), jnp.zeros(shape[:2], bool)


@functools.partial(jax.jit, static_argnames=("steps", "solver", "prediction", "shift"))
def _solve(noise, steps, solver, prediction, shift=1.0):
  lat, mask = _none_given(noise.shape)
  model = toy.gaussian_denoiser(MEAN, STD, prediction)
  return solvers.sample(model, noise, lat, mask, schedules.sigmas(steps, shift), solver=solver,
                        prediction=prediction)


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_euler_and_heun_converge_heun_faster(prediction):
  noise = _noise()
  exact = toy.gaussian_flow_target(noise, MEAN, STD)
  err = {(s, n): float(jnp.abs(_solve(noise, n, s, prediction) - exact).max())
         for s in ("euler", "heun") for n in (4, 16, 64)}
  assert err["euler", 64] < 0.03 and err["heun", 64] < 5e-4
  # Error falls like 1/steps for Euler (first order) and faster for Heun (second order).
  assert 3 < err["euler", 16] / err["euler", 64] < 5
  assert err["heun", 16] / err["heun", 64] > 10
  for n in (4, 16):
    assert err["heun", n] < 0.25 * err["euler", n]
  # A shifted schedule solves the same ODE.
  assert float(jnp.abs(_solve(noise, 64, "heun", prediction, shift=3.0) - exact).max()) < 1e-3


def test_whole_run_is_one_loop_calling_the_network_once_per_step():
  calls = []
  gauss = toy.gaussian_denoiser(MEAN, STD)

  def model(x, t, c):
    calls.append(x.shape)
    return gauss(x, t, c)

  lat, mask = _none_given()
  run = lambda steps: jax.make_jaxpr(lambda n: solvers.sample(
      model, n, lat, mask, schedules.sigmas(steps, 1.0)))(_noise())
  short, long_ = run(3), run(50)
  assert calls == [SHAPE, SHAPE]  # traced once per run: the step count is a loop bound
  prims = lambda jaxpr: [e.primitive.name for e in jaxpr.jaxpr.eqns]
  loops = [p for p in prims(short) if p in ("scan", "while")]
  assert len(loops) == 1 and prims(short) == prims(long_)


def test_cfg_scale_one_equals_conditional_and_guidance_is_one_batched_call():
  noise = _noise(1)
  lat, mask = _none_given()
  sig = schedules.sigmas(6, 1.0)
  shapes = []
  gauss = toy.gaussian_denoiser(std=STD)

  def model(x, t, c):
    shapes.append(x.shape[0])
    return gauss(x, t, c)

  cond = jnp.array([1.0, -2.0])
  uncond = jnp.zeros(2)
  run = lambda scale, u: solvers.sample(model, noise, lat, mask, sig, solver="heun",
                                        cfg_scale=scale, cond=cond, uncond=u)
  conditional = run(1.0, None)
  np.testing.assert_array_equal(run(1.0, uncond), conditional)  # static 1: no uncond call
  scale_one = jax.jit(lambda s: run(s, uncond))(jnp.float32(1.0))  # traced 1: both branches
  np.testing.assert_allclose(scale_one, conditional, atol=1e-5)  # compiled vs eager rounding
  assert 2 * SHAPE[0] in shapes  # cond and uncond went through the network together

  # Guidance extrapolates from the unconditional to the conditional answer.
  exact_c = toy.gaussian_flow_target(noise, cond[:, None, None, None, None], STD)
  exact_u = toy.gaussian_flow_target(noise, 0.0, STD)
  guided = jax.jit(lambda s: run(s, uncond))(jnp.float32(3.0))
  for b in range(2):
    gap_c = float(jnp.mean(guided[b] - exact_c[b]))
    gap_u = float(jnp.mean(exact_c[b] - exact_u[b]))
    assert gap_c * gap_u > 0  # pushed beyond the conditional mean, away from the unconditional


def test_conditioning_frames_stay_exact_and_are_seen_clean():
  noise = _noise(2)
  given = _noise(3)
  mask = jnp.array([[True, False, False], [False, True, True]])
  seen_t = []
  gauss = toy.gaussian_denoiser(MEAN, STD)

  def model(x, t, c):
    jax.debug.callback(lambda t: seen_t.append(np.asarray(t)), t)
    return gauss(x, t, c)

  for solver in ("euler", "heun"):
    seen_t.clear()
    out = solvers.sample(model, noise, given, mask, schedules.sigmas(5, 2.0), solver=solver)
    m = np.asarray(mask)
    np.testing.assert_array_equal(np.asarray(out)[m], np.asarray(given)[m])
    # Frames of this toy are independent: free frames come out as if nothing were given.
    free = solvers.sample(gauss, noise, given, jnp.zeros_like(mask), schedules.sigmas(5, 2.0),
                          solver=solver)
    np.testing.assert_allclose(np.asarray(out)[~m], np.asarray(free)[~m], atol=1e-6)
    assert all((t[m] == 0).all() and (t[~m] > 0).all() for t in seen_t)
    assert len(seen_t) == (5 if solver == "euler" else 9)  # Heun: Euler on the last step


def test_sdedit_start_returns_input_at_zero_and_solves_from_the_start_level():
  noise, clip = _noise(4), _noise(5)
  mask = jnp.zeros(SHAPE[:2], bool)
  model = toy.gaussian_denoiser(MEAN, STD)
  run = lambda start, steps=16: solvers.sample(
      model, noise, clip, mask, schedules.sigmas(steps, 1.0, start=start), solver="heun")
  np.testing.assert_array_equal(run(0.0), clip)
  assert float(jnp.abs(run(1e-3) - clip).max()) < 5e-3
  for start in (0.3, 0.7, 1.0):
    want = toy.gaussian_flow_target(noise, MEAN, STD, start=start, given=clip)
    np.testing.assert_allclose(run(start, 64), want, atol=5e-4)
  np.testing.assert_array_equal(run(1.0), solvers.sample(
      model, noise, jnp.zeros(SHAPE), mask, schedules.sigmas(16, 1.0), solver="heun"))


def test_bad_arguments_are_named():
  lat, mask = _none_given()
  model = toy.gaussian_denoiser()
  with pytest.raises(ValueError, match="solver"):
    solvers.sample(model, _noise(), lat, mask, schedules.sigmas(2, 1.0), solver="rk4")
  with pytest.raises(ValueError, match="cond_mask"):
    solvers.sample(model, _noise(), lat, mask[:, :2], schedules.sigmas(2, 1.0))
