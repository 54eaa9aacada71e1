"""The Flax T5 / umT5 encoders reproduce transformers' encoders from the same safetensors."""
import numpy as np
import pytest

import jax

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sora_jax.config_defaults import base_config  # noqa: E402
from sora_jax.models import t5  # noqa: E402
from sora_jax.models.text_encoder import load_text_encoder  # noqa: E402

pytestmark = pytest.mark.parity

_WORDS = "a red blue circle square moves left right slowly fast".split()


def _save_tiny(tmp_path, kind, ff_proj):
  """A tiny random HF encoder saved as safetensors + a word-level tokenizer.json."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  kw = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=16,
            feed_forward_proj=ff_proj, dropout_rate=0.0)
  if kind == "umt5":
    model = transformers.UMT5EncoderModel(transformers.UMT5Config(**kw))
  else:
    model = transformers.T5EncoderModel(transformers.T5Config(**kw))
  with torch.no_grad():  # Random, not zero-ish, norms and biases make the check bite.
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.uniform_(0.5, 1.5)
      if "relative_attention_bias" in name:
        p.normal_(0.0, 1.0)
  model.eval()
  model.save_pretrained(tmp_path, safe_serialization=True)
  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(_WORDS)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
  tok.save(str(tmp_path / "tokenizer.json"))
  return model


@pytest.mark.parametrize("kind, ff_proj", [("umt5", "gated-gelu"), ("t5", "gated-gelu"),
                                           ("t5", "relu")])
def test_encoder_matches_transformers(tmp_path, kind, ff_proj):
  model = _save_tiny(tmp_path, kind, ff_proj)
  module, params = t5.load_t5(str(tmp_path))
  assert module.cfg.per_layer_bias == (kind == "umt5")
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 64, size=(3, 20)).astype(np.int64)
  mask = np.ones((3, 20), bool)
  mask[1, 12:] = False
  mask[2, 3:] = False
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask.astype(np.int64))).last_hidden_state.numpy()
  out = np.asarray(jax.jit(module.apply)({"params": params}, ids.astype(np.int32), mask))
  err = np.abs(out - ref)[mask].max()
  print(f"{kind}-{ff_proj} max abs err {err:.2e}")
  assert err <= 1e-4, err


def test_relative_buckets_match_transformers():
  cfg = transformers.UMT5Config(relative_attention_num_buckets=32,
                                relative_attention_max_distance=128, is_decoder=False)
  attn = transformers.models.umt5.modeling_umt5.UMT5Attention(cfg, has_relative_attention_bias=True)
  rel = torch.arange(600)[None, :] - torch.arange(600)[:, None]
  ref = attn._relative_position_bucket(rel).numpy()  # pylint: disable=protected-access
  np.testing.assert_array_equal(t5.relative_position_bucket(600, 600, 32, 128), ref)


def test_text_encoder_api_over_umt5(tmp_path):
  """load_text_encoder(cfg) with text.encoder='umt5': pads to max_length, zero padding, </s>."""
  model = _save_tiny(tmp_path, "umt5", "gated-gelu")
  cfg = base_config()
  cfg.text.encoder, cfg.text.path, cfg.text.dim, cfg.text.max_length = "umt5", str(tmp_path), 32, 8
  enc = load_text_encoder(cfg)
  emb, mask = enc(["a red circle moves left", ""])
  assert emb.shape == (2, 8, 32) and emb.dtype == np.float32
  np.testing.assert_array_equal(np.asarray(mask).sum(1), [6, 1])  # words + </s>; "" -> </s>.
  assert np.all(np.asarray(emb)[~np.asarray(mask)] == 0)
  ids, m = enc.tokenize(["a red circle moves left"])
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(ids[:, :6].astype(np.int64))).last_hidden_state.numpy()
  assert np.abs(np.asarray(emb)[0, :6] - ref[0]).max() <= 1e-4
  cfg.text.dim = 33
  with pytest.raises(ValueError, match="text.dim=32"):
    load_text_encoder(cfg)
