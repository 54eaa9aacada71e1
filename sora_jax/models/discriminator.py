"""A small 3D patch discriminator for adversarial VAE training (hinge loss)."""
import flax.linen as nn
import jax
import jax.numpy as jnp


class PatchDiscriminator3D(nn.Module):
  """x_BTHWC in [-1, 1] -> patch logits (B, T', H', W', 1).

  Time is convolved with kernel 3 and stride 1 (so 1-frame images work too), space is
  halved per layer: each logit judges a small spacetime patch.
  """
  width: int = 32
  num_layers: int = 3

  @nn.compact
  def __call__(self, x_BTHWC: jax.Array) -> jax.Array:
    h = x_BTHWC
    for i in range(self.num_layers):
      h = nn.Conv(self.width * 2 ** i, (3, 4, 4), strides=(1, 2, 2),
                  padding=((1, 1), (1, 1), (1, 1)))(h)
      if i:
        h = nn.GroupNorm(num_groups=min(8, self.width * 2 ** i))(h)
      h = nn.leaky_relu(h, 0.2)
    return nn.Conv(1, (3, 3, 3), padding="SAME")(h)


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  return 0.5 * (jnp.mean(nn.relu(1.0 - logits_real)) + jnp.mean(nn.relu(1.0 + logits_fake)))


def generator_loss(logits_fake: jax.Array) -> jax.Array:
  return -jnp.mean(logits_fake)
