"""A tiny random Wan 2.1 T2V model in diffusers folder layout, and the config that loads it.

Shared by tests/test_open_weights.py and tests/test_lora.py. Everything is built in
process with torch CPU + diffusers/transformers (nothing is downloaded): a
WanTransformer3DModel, an AutoencoderKLWan and a UMT5EncoderModel with random weights, a
word-level tokenizer, and FlowMatchEulerDiscreteScheduler, saved with
`WanPipeline.save_pretrained` -- the layout of Wan-AI/Wan2.1-T2V-*-Diffusers. Import it
after `pytest.importorskip("diffusers")` (it needs torch, diffusers and transformers).
"""
import importlib.util
import os

import diffusers
import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

ROOT = os.path.join(os.path.dirname(__file__), "..")
WORDS = "a red blue green circle square triangle moves left right up down slowly fast".split()
SHIFT = 3.0
TEXT_LEN = 16


def load_config(name: str, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def tiny_config(weights: str, arg=None):
  """configs/wan2_1_t2v_1_3b.py (its Wan conventions) at the tiny model's sizes."""
  cfg = load_config("wan2_1_t2v_1_3b", arg)
  cfg.weights = weights
  cfg.vae.base_dim, cfg.vae.num_res_blocks = 8, 1
  cfg.text.max_length, cfg.text.dim, cfg.text.dtype = TEXT_LEN, 32, "float32"
  d = cfg.dit
  d.dim, d.ffn_dim, d.num_heads, d.num_layers, d.freq_dim = 24, 48, 2, 2, 32
  d.dtype, d.param_dtype, d.attention, d.remat_policy = "float32", "float32", "xla", "none"
  s = cfg.sample
  s.num_frames, s.height, s.width, s.steps, s.shift = 5, 32, 32, 4, SHIFT
  cfg.mesh.data, cfg.mesh.fsdp = -1, 1
  cfg.data.batch_size = 2
  return cfg


def _tokenizer():
  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                              eos_token="</s>", unk_token="<unk>")


def build(path: str, seed: int = 0):
  """Saves the tiny pipeline under `path`; returns the diffusers WanPipeline (float32)."""
  torch.manual_seed(seed)
  transformer = diffusers.WanTransformer3DModel(
      patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
      out_channels=16, text_dim=32, freq_dim=32, ffn_dim=48, num_layers=2, rope_max_seq_len=64)
  vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                   attn_scales=[], temperal_downsample=[False, True, True])
  text_encoder = transformers.UMT5EncoderModel(transformers.UMT5Config(
      vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
      relative_attention_num_buckets=8, relative_attention_max_distance=16,
      feed_forward_proj="gated-gelu", dropout_rate=0.0))
  with torch.no_grad():
    # Random norms, biases and tables, so no parameter is checked only at its init value.
    for p in transformer.parameters():
      p.copy_(torch.randn_like(p) * 0.2 + (0.5 if p.ndim == 1 else 0.0))
    for name, p in vae.named_parameters():
      if name.endswith(("gamma", "bias")):
        p.add_(0.1 * torch.randn_like(p))
    for name, p in text_encoder.named_parameters():
      if "layer_norm" in name:
        p.uniform_(0.5, 1.5)
      if "relative_attention_bias" in name:
        p.normal_(0.0, 1.0)
  pipe = diffusers.WanPipeline(
      tokenizer=_tokenizer(), text_encoder=text_encoder.eval(), vae=vae.eval(),
      scheduler=diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SHIFT),
      transformer=transformer.eval())
  pipe.save_pretrained(path)
  return pipe


def to_torch_latents(x_BTHWC: np.ndarray):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x_BTHWC).transpose(0, 4, 1, 2, 3)))
