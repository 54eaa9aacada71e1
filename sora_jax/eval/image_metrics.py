"""PSNR and SSIM on uint8-range videos (numpy, per frame, averaged)."""
import numpy as np


def psnr(a_THWC: np.ndarray, b_THWC: np.ndarray) -> float:
  """PSNR in dB over the whole clip, 0..255 range."""
  mse = np.mean((a_THWC.astype(np.float64) - b_THWC.astype(np.float64)) ** 2)
  return float(10.0 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def _gaussian_window(size: int = 7, sigma: float = 1.5) -> np.ndarray:
  x = np.arange(size) - (size - 1) / 2
  g = np.exp(-x ** 2 / (2 * sigma ** 2))
  return g / g.sum()


def _blur(x_NHW: np.ndarray, g: np.ndarray) -> np.ndarray:
  """Separable 'valid' Gaussian filter over H and W."""
  k = len(g)
  h = sum(g[i] * x_NHW[:, i:x_NHW.shape[1] - k + 1 + i, :] for i in range(k))
  return sum(g[i] * h[:, :, i:h.shape[2] - k + 1 + i] for i in range(k))


def ssim(a_THWC: np.ndarray, b_THWC: np.ndarray, window: int = 7) -> float:
  """Mean SSIM (Gaussian window, sigma 1.5) over frames and channels, 0..255 range.

  A 7-pixel window (rather than the usual 11 of Wang et al.) because the demo frames are
  32x32; with window=11 this is scikit-image's `structural_similarity(gaussian_weights=True,
  use_sample_covariance=False)` (tests/test_image_metrics.py).
  """
  a = np.moveaxis(a_THWC.astype(np.float64), -1, 1).reshape(-1, *a_THWC.shape[1:3])
  b = np.moveaxis(b_THWC.astype(np.float64), -1, 1).reshape(-1, *b_THWC.shape[1:3])
  g = _gaussian_window(window)
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  mu_a, mu_b = _blur(a, g), _blur(b, g)
  var_a = _blur(a * a, g) - mu_a ** 2
  var_b = _blur(b * b, g) - mu_b ** 2
  cov = _blur(a * b, g) - mu_a * mu_b
  s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
  return float(s.mean())


def to_uint8(x: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8."""
  return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_unit(x_uint8: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [-1, 1]."""
  return x_uint8.astype(np.float32) / 127.5 - 1.0
