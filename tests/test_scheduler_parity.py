"""The sampling schedule equals diffusers' FlowMatchEulerDiscreteScheduler (Wan/SD3 pipelines)."""
import numpy as np
import pytest

from sora_jax.diffusion import schedules

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parity
@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0, 5.0, 12.0])
@pytest.mark.parametrize("steps", [1, 2, 10, 30, 50])
def test_sigmas_and_timesteps_match_diffusers(shift, steps):
  ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
  ref.set_timesteps(steps)
  ours = schedules.sigmas(steps, shift)
  assert ours.shape == (steps + 1,) and ours.dtype == np.float32
  assert ours[0] == 1.0 and ours[-1] == 0.0
  np.testing.assert_allclose(ours, ref.sigmas.numpy(), rtol=0, atol=1e-6)
  # Our timesteps are the sigmas in [0, 1]; diffusers' are scaled to [0, 1000].
  np.testing.assert_allclose(ours[:-1], ref.timesteps.numpy() / 1000, rtol=0, atol=1e-6)
  np.testing.assert_allclose(ours[:-1] * 1000, ref.timesteps.numpy(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("shift", [0.5, 1.0, 5.0])
def test_sdedit_schedule_starts_at_strength_and_keeps_its_steps(shift):
  for start in (0.0, 0.05, 0.5, 0.9):
    s = schedules.sigmas(20, shift, start=start)
    assert s.shape == (21,) and s[0] == np.float32(start) and s[-1] == 0.0
    assert (np.diff(s) <= 0).all()
  np.testing.assert_array_equal(schedules.sigmas(20, shift, start=1.0), schedules.sigmas(20, shift))
  assert not schedules.sigmas(7, shift, start=0.0).any()
  with pytest.raises(ValueError, match="steps"):
    schedules.sigmas(0, shift)
  with pytest.raises(ValueError, match="shift"):
    schedules.sigmas(4, -1.0)
