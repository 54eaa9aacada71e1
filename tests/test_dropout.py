"""`vae.dropout` acts in the VAE trainer's forward pass (it passes a dropout rng; > 0 used to
crash `--mode=train_vae`), and is absent at 0. `dit.dropout` in the DiT trainer is checked
by tests/test_mesh_equivalence.py, which shares its compiled programs."""
import flax.linen as nn
import jax
import numpy as np

from sora_jax.config_defaults import base_config
from sora_jax.models import vae as vae_lib
from sora_jax.training import train_vae


def _forward(dropout: float, params=None):
  cfg = base_config()
  cfg.vae.base_dim, cfg.vae.z_dim, cfg.vae.dropout = 4, 4, dropout
  cfg.vae.dim_mult, cfg.vae.temporal_downsample = (1, 2), (False,)
  vae = vae_lib.vae_from_config(cfg)
  if params is None:  # random weights without compiling an init: only the shapes are traced
    shapes = nn.unbox(jax.eval_shape(lambda: vae_lib.init_variables(vae, jax.random.key(0))))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32),
                          shapes["params"])
  x = np.random.default_rng(1).uniform(-1, 1, (1, 1, 8, 8, 3)).astype(np.float32)
  fwd = jax.jit(lambda p, x, k: train_vae.training_forward(vae, p, x, k)[0])
  return params, np.asarray(fwd(params, x, jax.random.PRNGKey(0)))


def test_vae_dropout_acts_in_the_training_pass():
  params, plain = _forward(0.0)
  _, dropped = _forward(0.5, params)
  assert np.all(np.isfinite(dropped))
  assert np.max(np.abs(plain - dropped)) > 1e-3 * np.max(np.abs(plain)), "dropout had no effect"
