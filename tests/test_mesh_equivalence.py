"""A train step and a sampling step give the same numbers on every mesh as on one device.

Tiny DiT (2 layers, dim 64, 8 heads), batch 8 of 5 x 8 x 8 latents (80 tokens), on the 8
virtual CPU devices laid out as (data, fsdp, sequence, tensor) = (8,1,1,1), (2,2,1,2),
(1,2,2,2) and (1,1,4,2), with the XLA kernel and, on the sequence-parallel mesh, Ulysses
and ring attention. Two train steps are compared (the zero-initialised output head gets
the only gradient of the first one), then one CFG Euler step with the trained weights.
"""
import jax
import ml_collections
import numpy as np
import pytest

from sora_jax.config_defaults import base_config
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import benchmark, train

LATENT = (5, 8, 8, 8)  # (T, H, W, C): 17 x 32 x 32 pixels under an 8-channel VAE.
TEXT_LEN = 8
BATCH = 8
REL = 1e-5


def _config(attention="xla"):
  cfg = base_config()
  cfg.vae.z_dim = LATENT[-1]
  cfg.dit.dim, cfg.dit.ffn_dim, cfg.dit.num_heads, cfg.dit.num_layers = 64, 128, 8, 2
  cfg.dit.freq_dim = 32
  cfg.dit.attention = attention
  cfg.dit.attention_block = 16
  cfg.text.dim, cfg.text.max_length = 32, TEXT_LEN
  cfg.data.batch_size = BATCH
  cfg.train.warmup_steps = 1
  cfg.sample.steps, cfg.sample.cfg_scale = 4, 3.0
  return cfg


def _run(cfg, mesh):
  """(losses of 2 train steps, params after them, one sampling step's output) on `mesh`."""
  stats = (np.zeros(LATENT[-1], np.float32), np.ones(LATENT[-1], np.float32))
  null_text = (np.zeros((TEXT_LEN, cfg.text.dim), np.float32), np.arange(TEXT_LEN) == 0)
  trainer = train.Trainer(cfg, stats, null_text, (BATCH, *LATENT), TEXT_LEN, mesh=mesh)
  batch = trainer.to_device(benchmark.synthetic_batch(cfg, BATCH, LATENT, TEXT_LEN, seed=1))
  state = trainer.init_state()
  losses = []
  for _ in range(2):
    state, metrics = trainer.step(state, batch)
    losses.append(float(metrics["loss"]))
  params = jax.device_get(state["params"])
  noise = np.random.default_rng(2).standard_normal((BATCH, *LATENT), np.float32)
  with trainer.context():
    sample = benchmark.make_sample_step(cfg, trainer, 80)(
        state["params"], noise, batch["caption_emb"], batch["caption_mask"])
  return np.asarray(losses), params, np.asarray(jax.device_get(sample))


def _mesh(shape, devices=None):
  sizes = ml_collections.ConfigDict(dict(zip(mesh_lib.AXES, shape)))
  return mesh_lib.make_mesh(sizes, devices=devices)


@pytest.fixture(scope="module")
def single_device():
  return _run(_config(), _mesh((1, 1, 1, 1), devices=jax.devices()[:1]))


def _assert_close(got, want, what):
  scale = max(float(np.max(np.abs(want))), 1e-12)
  err = float(np.max(np.abs(np.asarray(got) - np.asarray(want))))
  assert err <= REL * scale, f"{what}: max |diff| {err:.3g} > {REL} x max |ref| {scale:.3g}"


@pytest.mark.parametrize("shape,attention", [
    ((8, 1, 1, 1), "xla"), ((2, 2, 1, 2), "xla"), ((1, 2, 2, 2), "xla"),
    ((1, 1, 4, 2), "xla"), ((1, 1, 4, 2), "ulysses"), ((1, 1, 4, 2), "ring")])
def test_train_and_sample_steps_match_single_device(shape, attention, single_device):
  ref_losses, ref_params, ref_sample = single_device
  losses, params, sample = _run(_config(attention), _mesh(shape))
  _assert_close(losses, ref_losses, "losses")
  flat_ref = jax.tree_util.tree_flatten_with_path(ref_params)[0]
  for (path, want), got in zip(flat_ref, jax.tree.leaves(params)):
    _assert_close(got, want, f"params{jax.tree_util.keystr(path)}")
  _assert_close(sample, ref_sample, "sampling step")
  assert not np.allclose(sample, 0)  # The trained head is live: the comparison means something.
