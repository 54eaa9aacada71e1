"""Multi-head attention core shared by the DiT and the text encoders.

One entry, `attend`, dispatching on `impl` so every model picks its kernel from config
(`dit.attention`) without knowing how it is computed. Projections, norms and RoPE live in
the callers; this file only turns (q, k, v, key mask) into the attended values.
"""
import jax
import jax.numpy as jnp


def _attend_xla(q_BLHD, k_BSHD, v_BSHD, kv_mask_BS):
  """Plain einsum attention: logits and softmax in float32 whatever the input dtype.

  Head-major inside (one transpose of each input and of the output) with the scale folded
  into q, as flash kernels do: on XLA:CPU the forward and backward of the dit_50m
  attention (8 x 320 tokens, 8 heads of 64) took 107 ms against 122 ms with the dots
  contracting the token-major layout and the logits scaled (docs/results.md, "Speed")."""
  scale = q_BLHD.shape[-1] ** -0.5
  heads = lambda a: jnp.swapaxes(a, 1, 2)  # (B, L, H, D) <-> (B, H, L, D)
  q_BHLD = heads(q_BLHD * jnp.asarray(scale, q_BLHD.dtype))
  logits_BHLS = jnp.einsum("bhld,bhsd->bhls", q_BHLD, heads(k_BSHD),
                           preferred_element_type=jnp.float32)
  if kv_mask_BS is not None:
    # A finite floor instead of -inf: a row with every key masked attends uniformly
    # instead of turning into NaN (and NaN gradients) when a caller passes an empty mask.
    logits_BHLS = jnp.where(kv_mask_BS[:, None, None, :], logits_BHLS,
                            jnp.finfo(jnp.float32).min)
  probs_BHLS = jax.nn.softmax(logits_BHLS, axis=-1).astype(v_BSHD.dtype)
  return heads(jnp.einsum("bhls,bhsd->bhld", probs_BHLS, heads(v_BSHD)))


# The other kernels (blockwise, cuDNN, splash, Ulysses, ring) live with the parallelism
# code in sora_jax/parallel/attention_kernels.py, which also documents how they find the mesh.
IMPLS = ("xla", "cudnn", "splash", "blockwise", "ulysses", "ring")


def attend(q_BLHD, k_BSHD, v_BSHD, *, kv_mask_BS=None, impl="xla", block=512):
  """Softmax attention of queries over keys/values, scaled by 1/sqrt(D).

  Args:
    q_BLHD: queries (batch, query tokens, heads, head dim), any float dtype.
    k_BSHD, v_BSHD: keys and values (batch, key tokens, heads, head dim).
    kv_mask_BS: optional bool (batch, key tokens); False keys get no weight.
    impl: kernel name, one of `IMPLS` (config `dit.attention`).
    block: query/key block of 'blockwise' and 'ring' (config `dit.attention_block`).

  Returns:
    (batch, query tokens, heads, head dim) in v's dtype; the softmax runs in float32.
  """
  if q_BLHD.ndim != 4 or k_BSHD.shape != v_BSHD.shape or q_BLHD.shape[-1] != k_BSHD.shape[-1]:
    raise ValueError(f"attend wants q (B,L,H,D), k and v (B,S,H,D); got q {q_BLHD.shape}, "
                     f"k {k_BSHD.shape}, v {v_BSHD.shape}")
  if impl not in IMPLS:
    raise ValueError(f"attention impl {impl!r} is not available; choose one of: "
                     f"{', '.join(IMPLS)}")
  if impl == "xla":
    return _attend_xla(q_BLHD, k_BSHD, v_BSHD, kv_mask_BS)
  from sora_jax.parallel import attention_kernels  # pylint: disable=g-import-not-at-top
  return attention_kernels.attend(q_BLHD, k_BSHD, v_BSHD, kv_mask_BS=kv_mask_BS, impl=impl,
                                  block=block)
