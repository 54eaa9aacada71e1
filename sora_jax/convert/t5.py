"""transformers `T5EncoderModel` / `UMT5EncoderModel` state dict -> `models.t5.T5Encoder` params.

Names (torch Linear weights are (out, in), so kernels are transposed):
  shared.weight | encoder.embed_tokens.weight          -> shared/embedding
  encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}     -> layers_{i}/{q,k,v,o}/kernel
  encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias  (all i: umT5; i=0: T5)
                                                        -> relative_attention_bias[i]
  encoder.block.{i}.layer.0.layer_norm                  -> layers_{i}/attn_norm/scale
  encoder.block.{i}.layer.1.DenseReluDense.{wi|wi_0,wi_1,wo} -> layers_{i}/{...}/kernel
  encoder.block.{i}.layer.1.layer_norm                  -> layers_{i}/ffn_norm/scale
  encoder.final_layer_norm                              -> final_norm/scale
Decoder and LM-head tensors (a full T5 checkpoint) are ignored; any other tensor that is
missing or left over is an error naming it.
"""
import numpy as np

_IGNORED_PREFIXES = ("decoder.", "lm_head.")


def t5_params_from_hf(sd: dict[str, np.ndarray], cfg) -> dict:
  """Converts; `cfg` is a `models.t5.T5Config`. Raises KeyError/ValueError naming a tensor."""
  sd = {k: v for k, v in sd.items() if not k.startswith(_IGNORED_PREFIXES)}
  used = set()

  def take(name, shape):
    if name not in sd:
      raise KeyError(f"T5 checkpoint is missing tensor {name!r} (expected shape {shape})")
    arr = sd[name]
    if tuple(arr.shape) != tuple(shape):
      raise ValueError(f"T5 tensor {name!r} has shape {tuple(arr.shape)}, expected {shape}")
    used.add(name)
    return arr

  # HF ties the encoder's embedding to `shared`; files hold either name or both.
  emb_name = "shared.weight" if "shared.weight" in sd else "encoder.embed_tokens.weight"
  params = {"shared": {"embedding": take(emb_name, (cfg.vocab_size, cfg.d_model))}}
  used.update(k for k in ("shared.weight", "encoder.embed_tokens.weight") if k in sd)
  inner = cfg.num_heads * cfg.d_kv
  tables = []
  for i in range(cfg.num_layers):
    p = f"encoder.block.{i}.layer."
    lin = lambda name, n_in, n_out: {"kernel": take(name + ".weight", (n_out, n_in)).T}
    layer = {
        "attn_norm": {"scale": take(p + "0.layer_norm.weight", (cfg.d_model,))},
        "ffn_norm": {"scale": take(p + "1.layer_norm.weight", (cfg.d_model,))},
        "o": lin(p + "0.SelfAttention.o", inner, cfg.d_model),
        "wo": lin(p + "1.DenseReluDense.wo", cfg.d_ff, cfg.d_model),
    }
    for n in ("q", "k", "v"):
      layer[n] = lin(p + "0.SelfAttention." + n, cfg.d_model, inner)
    for n in (("wi_0", "wi_1") if cfg.gated else ("wi",)):
      layer[n] = lin(p + "1.DenseReluDense." + n, cfg.d_model, cfg.d_ff)
    if cfg.per_layer_bias or i == 0:
      tables.append(take(p + "0.SelfAttention.relative_attention_bias.weight",
                         (cfg.num_buckets, cfg.num_heads)))
    params[f"layers_{i}"] = layer
  params["relative_attention_bias"] = np.stack(tables)
  params["final_norm"] = {"scale": take("encoder.final_layer_norm.weight", (cfg.d_model,))}
  extra = sorted(set(sd) - used)
  if extra:
    raise ValueError(f"T5 checkpoint has {len(extra)} tensor(s) this encoder does not use, first "
                     f"{extra[0]!r}; is config.json's model_type/feed_forward_proj right?")
  return params
