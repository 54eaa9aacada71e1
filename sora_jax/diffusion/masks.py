"""Random conditioning masks over latent frames, and caption dropout, for training.

A conditioning mask `cond_BT` (bool) marks latent frames that are given clean (t = 0)
to the network and left out of the loss; one model then serves text-to-video (no frame
given), image-to-video (first), extension (first k / last k), interpolation and looping
(first and last) and general inpainting in time (random).

Mask types (`config.diffusion.cond_masks` gives their probabilities):
  none        no frame.
  first       frame 0.
  first_k     frames 0..k-1, k uniform in [1, T-1].
  last_k      frames T-k..T-1, k uniform in [1, T-1].
  first_last  frames 0 and T-1 (T = 2: frame 0 only, so one frame is left to learn).
  random      k uniform in [1, T-1] frames chosen uniformly without replacement.
Every type leaves at least one frame unconditioned. A single-frame clip (T = 1, an
image) gets no conditioning whatever the type: conditioning its only frame would leave
nothing to denoise, so images always train text-to-image.
"""
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.config_check import COND_MASKS


def mask_probs(probs: dict[str, float]) -> np.ndarray:
  """{'first': 0.3, ...} -> probabilities in COND_MASKS order (missing names get 0)."""
  unknown = set(probs) - set(COND_MASKS)
  if unknown:
    raise ValueError(f"unknown conditioning masks {sorted(unknown)}; choose from {COND_MASKS}")
  p = np.array([float(probs.get(name, 0.0)) for name in COND_MASKS], np.float64)
  if (p < 0).any() or p.sum() <= 0:
    raise ValueError(f"conditioning-mask probabilities {probs} must be >= 0 with a positive sum")
  return p / p.sum()


def sample_cond_mask(rng, batch: int, frames: int, probs: dict[str, float]) -> jnp.ndarray:
  """cond_BT (bool, shape (batch, frames)): one random mask type per sample, see module doc.

  `probs` is `config_check.parse_weights(config.diffusion.cond_masks, COND_MASKS)`.
  """
  p = mask_probs(probs)
  if frames == 1:
    return jnp.zeros((batch, 1), bool)
  k_type, k_k, k_perm = jax.random.split(rng, 3)
  kind_B = jax.random.choice(k_type, len(COND_MASKS), (batch,), p=jnp.asarray(p, jnp.float32))
  k_B1 = jax.random.randint(k_k, (batch, 1), 1, frames)  # in [1, T-1]
  idx_1T = jnp.arange(frames)[None, :]
  # rank of each frame in a random order: rank < k picks k frames uniformly.
  rank_BT = jnp.argsort(jnp.argsort(jax.random.uniform(k_perm, (batch, frames)), axis=1), axis=1)
  first = idx_1T == 0
  last = (idx_1T == frames - 1) & (frames > 2)
  masks = {
      "none": jnp.zeros((batch, frames), bool),
      "first": jnp.broadcast_to(first, (batch, frames)),
      "first_k": idx_1T < k_B1,
      "last_k": idx_1T >= frames - k_B1,
      "first_last": jnp.broadcast_to(first | last, (batch, frames)),
      "random": rank_BT < k_B1,
  }
  all_KBT = jnp.stack([masks[name] for name in COND_MASKS])
  return jnp.take_along_axis(all_KBT, kind_B[None, :, None], axis=0)[0]


def drop_captions(rng, emb_BLD: jnp.ndarray, mask_BL: jnp.ndarray, p: float, null=None):
  """Replaces each caption with probability p by the null text, for classifier-free guidance.

  `null` = (emb_LD, mask_L) of the null text, the same value samplers pass as `uncond`
  (e.g. the encoded empty prompt). None means an all-zero embedding with an all-False
  token mask, which the network must then accept (a caption with no valid token).
  Returns (emb_BLD, mask_BL) of the input shapes and dtypes.
  """
  keep_B = jax.random.uniform(rng, (emb_BLD.shape[0],)) >= p
  null_emb, null_mask = null_text(emb_BLD, mask_BL) if null is None else (
      jnp.broadcast_to(null[0], emb_BLD.shape), jnp.broadcast_to(null[1], mask_BL.shape))
  emb = jnp.where(keep_B[:, None, None], emb_BLD, null_emb.astype(emb_BLD.dtype))
  mask = jnp.where(keep_B[:, None], mask_BL, null_mask)
  return emb, mask


def null_text(emb_BLD: jnp.ndarray, mask_BL: jnp.ndarray):
  """The zero null caption shaped like a batch of captions: (zeros_like(emb), all-False mask)."""
  return jnp.zeros_like(emb_BLD), jnp.zeros_like(mask_BL, dtype=bool)
