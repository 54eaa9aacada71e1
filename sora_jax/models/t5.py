"""T5 / umT5 encoder in Flax, for the text conditioning of the scale configs (Wan: umT5-XXL).

Matches transformers' `T5EncoderModel` / `UMT5EncoderModel` (pre-RMS-norm blocks, no
attention scaling, bucketed relative position bias added to the logits). The one
difference between the two: T5 learns one bias table in its first layer and shares it,
umT5 learns one per layer. Weights come from a local folder of HF safetensors
(`config.json` + `*.safetensors`, converted by `sora_jax.convert.t5`).

Param tree:
  shared/embedding                   (vocab, d_model)
  relative_attention_bias            (num_bias_tables, num_buckets, heads); tables = layers (umT5) or 1 (T5)
  layers_{i}/attn_norm/scale         (d_model,)
  layers_{i}/{q,k,v}/kernel          (d_model, heads * d_kv);  o/kernel (heads * d_kv, d_model)
  layers_{i}/ffn_norm/scale          (d_model,)
  layers_{i}/{wi | wi_0, wi_1}/kernel (d_model, d_ff);  wo/kernel (d_ff, d_model)
  final_norm/scale                   (d_model,)
"""
import dataclasses
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax import paths
from sora_jax.models.norms import RMSNorm

_ACTS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shapes of a T5 / umT5 encoder (the fields of an HF config.json that matter here)."""
  vocab_size: int
  d_model: int
  d_kv: int
  d_ff: int
  num_layers: int
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  eps: float = 1e-6
  act: str = "gelu_new"  # transformers' `dense_act_fn`.
  gated: bool = True  # Gated MLP (T5 v1.1, umT5) or plain (original T5).
  per_layer_bias: bool = True  # umT5: one relative-bias table per layer; T5: one shared.

  @classmethod
  def from_hf(cls, hf: dict) -> "T5Config":
    """From an HF config.json dict (model_type 't5' or 'umt5')."""
    proj = hf.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]
    if act not in _ACTS:
      raise ValueError(f"feed_forward_proj={proj!r}: activation {act!r} is not one of {list(_ACTS)}")
    if hf.get("model_type") not in ("t5", "umt5"):
      raise ValueError(f"config.json model_type={hf.get('model_type')!r}; expected 't5' or 'umt5'")
    return cls(
        vocab_size=hf["vocab_size"], d_model=hf["d_model"], d_kv=hf["d_kv"], d_ff=hf["d_ff"],
        num_layers=hf["num_layers"], num_heads=hf["num_heads"],
        num_buckets=hf.get("relative_attention_num_buckets", 32),
        max_distance=hf.get("relative_attention_max_distance", 128),
        eps=hf.get("layer_norm_epsilon", 1e-6), act=act, gated=parts[0] == "gated",
        per_layer_bias=hf["model_type"] == "umt5")


def relative_position_bucket(q_len: int, k_len: int, num_buckets: int,
                             max_distance: int) -> np.ndarray:
  """(q_len, k_len) int32 bucket of (key pos - query pos), bidirectional, as T5 bins it.

  Computed in numpy float32 at trace time (shapes are static), mirroring the reference's
  float32 log so bucket boundaries agree exactly.
  """
  rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
  half = num_buckets // 2
  buckets = (rel > 0).astype(np.int64) * half
  rel = np.abs(rel)
  max_exact = half // 2
  with np.errstate(divide="ignore"):
    log_ratio = (np.log(rel.astype(np.float32) / np.float32(max_exact))
                 / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact))
  large = np.minimum(max_exact + np.where(rel < max_exact, 0, log_ratio).astype(np.int64), half - 1)
  return (buckets + np.where(rel < max_exact, rel, large)).astype(np.int32)


class _T5Layer(nn.Module):
  cfg: T5Config
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, h_BLD, bias_BHLS):
    c = self.cfg
    b, l, _ = h_BLD.shape
    dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=self.dtype,
                                     param_dtype=self.dtype, name=name)
    x = RMSNorm(c.eps, self.dtype, None, name="attn_norm")(h_BLD)
    q, k, v = (dense(c.num_heads * c.d_kv, n)(x).reshape(b, l, c.num_heads, c.d_kv)
               for n in ("q", "k", "v"))
    # T5 does not scale logits by 1/sqrt(d): its bias and init absorb it, so this attention
    # keeps its own einsum rather than the shared `attend` (which scales).
    logits = jnp.einsum("blhd,bshd->bhls", q, k, preferred_element_type=jnp.float32) + bias_BHLS
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    a = jnp.einsum("bhls,bshd->blhd", probs, v).reshape(b, l, -1)
    h_BLD = h_BLD + dense(c.d_model, "o")(a)
    x = RMSNorm(c.eps, self.dtype, None, name="ffn_norm")(h_BLD)
    act = _ACTS[c.act]
    if c.gated:
      f = act(dense(c.d_ff, "wi_0")(x)) * dense(c.d_ff, "wi_1")(x)
    else:
      f = act(dense(c.d_ff, "wi")(x))
    return h_BLD + dense(c.d_model, "wo")(f)


class T5Encoder(nn.Module):
  """ids_BL int, mask_BL bool -> final hidden states BLD (in `dtype`)."""
  cfg: T5Config
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, ids_BL, mask_BL):
    c = self.cfg
    l = ids_BL.shape[1]
    h_BLD = nn.Embed(c.vocab_size, c.d_model, dtype=self.dtype, param_dtype=self.dtype,
                     name="shared")(ids_BL)
    tables = self.param("relative_attention_bias", nn.initializers.normal(c.d_model ** -0.5),
                        (c.num_layers if c.per_layer_bias else 1, c.num_buckets, c.num_heads),
                        self.dtype)
    bucket_LS = relative_position_bucket(l, l, c.num_buckets, c.max_distance)
    key_mask_B11S = jnp.where(mask_BL, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]
    for i in range(c.num_layers):
      table = tables[i if c.per_layer_bias else 0].astype(jnp.float32)
      bias_BHLS = jnp.transpose(table[bucket_LS], (2, 0, 1))[None] + key_mask_B11S
      h_BLD = _T5Layer(c, self.dtype, name=f"layers_{i}")(h_BLD, bias_BHLS)
    return RMSNorm(c.eps, self.dtype, None, name="final_norm")(h_BLD)


def _find_tokenizer(path: str) -> str:
  """tokenizer.json in the weights folder, or in a sibling `tokenizer/` (diffusers layout)."""
  for cand in (os.path.join(path, "tokenizer.json"),
               os.path.join(path, "tokenizer", "tokenizer.json"),
               str(paths.path(path).parent / "tokenizer" / "tokenizer.json")):
    if paths.path(cand).is_file():
      return cand
  raise FileNotFoundError(
      f"no tokenizer.json in {path}, {path}/tokenizer or ../tokenizer; copy the model's "
      "tokenizer.json (e.g. google/umt5-xxl's) next to its weights")


def load_t5(path: str, dtype: str = "float32"):
  """(T5Encoder module, params) from an HF folder, local or on a bucket (config.json +
  *.safetensors)."""
  from sora_jax.convert import t5 as convert_t5  # pylint: disable=g-import-not-at-top
  from sora_jax.convert.safetensors_io import read_tensors  # pylint: disable=g-import-not-at-top
  if not path or not paths.path(path).is_dir():
    raise FileNotFoundError(
        f"text.path={path!r} is not a folder; point it at a T5/umT5 encoder in HF format "
        "(config.json + *.safetensors; local or gs://), e.g. "
        "Wan2.1-T2V-1.3B-Diffusers/text_encoder")
  cfg = T5Config.from_hf(json.loads(paths.read_text(os.path.join(path, "config.json"))))
  jdtype = jnp.dtype(dtype)
  params = convert_t5.t5_params_from_hf(read_tensors(path), cfg)
  params = jax.tree.map(lambda x: jnp.asarray(x, jdtype), params)
  return T5Encoder(cfg, jdtype), params


def load_t5_text_encoder(path: str, max_length: int, dtype: str, name: str):
  """A `TextEncoder` over the T5/umT5 encoder in `path` (see text_encoder.py)."""
  from sora_jax.models import text_encoder  # pylint: disable=g-import-not-at-top
  module, params = load_t5(path, dtype)
  if (name == "umt5") != module.cfg.per_layer_bias:
    kind = "umt5" if module.cfg.per_layer_bias else "t5"
    raise ValueError(f"text.encoder={name!r} but {path}/config.json describes a {kind} model; "
                     f"set --config.text.encoder={kind}")
  tok = text_encoder.load_tokenizer(_find_tokenizer(path), max_length, "<pad>")
  return text_encoder.TextEncoder(name, module.cfg.d_model, max_length, tok, params,
                                  text_encoder.make_apply(module))
