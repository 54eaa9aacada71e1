"""A train step and a sampling step give the same numbers on every mesh as on one device.

Tiny DiT (2 layers, dim 64, 8 heads), batch 8 of 5 x 8 x 8 latents (80 tokens), on the 8
virtual CPU devices laid out as (data, fsdp, sequence, tensor) = (8,1,1,1), (2,2,1,2),
(1,2,2,2) and (1,1,4,2), with the XLA kernel and, on the sequence-parallel mesh, Ulysses
and ring attention. STEPS train steps are compared, losses and final parameters: step 1
runs at learning rate 0 (warm-up) and step 2 trains only the zero-initialised output head,
so the transformer blocks first get gradients in step 3 and their updates show in the
losses from step 4. Then one CFG Euler step with the trained weights. The same run with
dit.dropout > 0 checks that the DiT trainer's dropout acts (it shares the compiled init
and sampling programs).
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
# Parameters after STEPS AdamW steps, against the update they received: Adam divides each
# gradient by its own running RMS, so float rounding in a near-zero gradient (the key biases
# have none: softmax ignores them) moves the update by more than REL of the value.
REL_UPDATE = 1e-3
STEPS = 5


def _config(attention="xla", dropout=0.0):
  cfg = base_config()
  cfg.dit.dropout = dropout
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
  """(losses of STEPS train steps, params after them, one sampling step's output, initial
  params) on `mesh`."""
  stats = (np.zeros(LATENT[-1], np.float32), np.ones(LATENT[-1], np.float32))
  null_text = (np.zeros((TEXT_LEN, cfg.text.dim), np.float32), np.arange(TEXT_LEN) == 0)
  trainer = train.Trainer(cfg, stats, null_text, (BATCH, *LATENT), TEXT_LEN, mesh=mesh)
  batch = trainer.to_device(benchmark.synthetic_batch(cfg, BATCH, LATENT, TEXT_LEN, seed=1))
  state = trainer.init_state()
  init = jax.device_get(state["params"])
  losses = []
  for _ in range(STEPS):
    state, metrics = trainer.step(state, batch)
    losses.append(float(metrics["loss"]))
  params = jax.device_get(state["params"])
  noise = np.random.default_rng(2).standard_normal((BATCH, *LATENT), np.float32)
  with trainer.context():
    sample = benchmark.make_sample_step(cfg, trainer, 80)(
        state["params"], noise, batch["caption_emb"], batch["caption_mask"])
  return np.asarray(losses), params, np.asarray(jax.device_get(sample)), init


def _mesh(shape, devices=None):
  sizes = ml_collections.ConfigDict(dict(zip(mesh_lib.AXES, shape)))
  return mesh_lib.make_mesh(sizes, devices=devices)


@pytest.fixture(scope="module")
def single_device():
  return _run(_config(), _mesh((1, 1, 1, 1), devices=jax.devices()[:1]))


def _assert_close(got, want, what, rel=REL):
  scale = max(float(np.max(np.abs(want))), 1e-12)
  err = float(np.max(np.abs(np.asarray(got) - np.asarray(want))))
  assert err <= rel * scale, f"{what}: max |diff| {err:.3g} > {rel} x max |ref| {scale:.3g}"


@pytest.mark.parametrize("shape,attention", [
    ((8, 1, 1, 1), "xla"), ((2, 2, 1, 2), "xla"), ((1, 2, 2, 2), "xla"),
    ((1, 1, 4, 2), "xla"), ((1, 1, 4, 2), "ulysses"), ((1, 1, 4, 2), "ring")])
def test_train_and_sample_steps_match_single_device(shape, attention, single_device):
  ref_losses, ref_params, ref_sample, init = single_device
  losses, params, sample, _ = _run(_config(attention), _mesh(shape))
  _assert_close(losses, ref_losses, "losses")
  flat_ref = jax.tree_util.tree_flatten_with_path(ref_params)[0]
  for (path, want), got, start in zip(flat_ref, jax.tree.leaves(params), jax.tree.leaves(init)):
    _assert_close(got - start, want - start, f"update of params{jax.tree_util.keystr(path)}",
                  REL_UPDATE)
  _assert_close(sample, ref_sample, "sampling step")
  assert not np.allclose(sample, 0)  # The trained head is live: the comparison means something.


def test_every_block_trains_in_the_compared_steps(single_device):
  """The comparison above covers the blocks: each of their parameters moved from its init."""
  losses, params, _, init = single_device
  flat_init = jax.tree_util.tree_flatten_with_path(init)[0]
  for (path, before), after in zip(flat_init, jax.tree.leaves(params)):
    assert not np.allclose(before, after, rtol=0, atol=1e-7), jax.tree_util.keystr(path)
  assert len(set(np.round(losses[2:], 6))) == STEPS - 2  # the losses move after the head trains


def test_dit_dropout_acts_in_training(single_device):
  ref_losses = single_device[0]
  losses, _, _, _ = _run(_config(dropout=0.5), _mesh((1, 1, 1, 1), devices=jax.devices()[:1]))
  # Steps 1-2 see the zero-initialised head (outputs 0 whatever dropout does); from step 3
  # dropout on the blocks' attention/MLP outputs changes every loss.
  np.testing.assert_array_equal(losses[:2], ref_losses[:2])
  assert np.all(np.abs(losses[2:] - ref_losses[2:]) > 1e-4 * np.abs(ref_losses[2:])), losses
