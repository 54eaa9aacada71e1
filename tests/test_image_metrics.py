"""PSNR and SSIM (the VAE's reported reconstruction figures) against scikit-image."""
import numpy as np
import pytest
from skimage import metrics as skm

from sora_jax.eval import image_metrics


def _pair(seed, shape=(3, 24, 20, 3)):
  rng = np.random.default_rng(seed)
  a = rng.integers(0, 256, shape, dtype=np.uint8)
  noise = rng.normal(0, 12 * (seed + 1), shape)
  return a, np.clip(a + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psnr_matches_scikit_image(seed):
  a, b = _pair(seed)
  assert image_metrics.psnr(b, a) == pytest.approx(
      skm.peak_signal_noise_ratio(a, b, data_range=255), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_matches_scikit_image(seed):
  """With the standard 11-tap window scikit-image computes the same SSIM (per frame, over
  channels; its reflect padding is cropped away, so only the window size differs from the
  7-tap default reported on 32x32 frames)."""
  a, b = _pair(seed)
  want = np.mean([skm.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False, data_range=255,
                                            channel_axis=-1) for x, y in zip(a, b)])
  assert image_metrics.ssim(a, b, window=11) == pytest.approx(want, abs=1e-10)
  assert image_metrics.ssim(a, a) == pytest.approx(1.0) and image_metrics.ssim(a, b) < 0.99
