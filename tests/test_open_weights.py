"""Open weights: a Wan 2.1 diffusers folder loads through config + `weights`, samples like
diffusers' WanPipeline, loads sharded per host, and fails with one-line errors.

The model is a tiny random Wan 2.1 T2V pipeline built in process (tests/wan_tiny.py).
"""
import json
import math
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

import wan_tiny  # noqa: E402  (tests/ is on sys.path)
from sora_jax.config_check import ConfigError  # noqa: E402
from sora_jax.convert import safetensors_io, wan_dit  # noqa: E402
from sora_jax.models import dit as dit_lib  # noqa: E402
from sora_jax.models import t5 as t5_lib  # noqa: E402
from sora_jax.models import vae as vae_lib  # noqa: E402
from sora_jax.models import weights  # noqa: E402
from sora_jax.parallel import mesh as mesh_lib  # noqa: E402


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
  """(folder, diffusers WanPipeline) of the tiny random model."""
  root = str(tmp_path_factory.mktemp("wan") / "Wan2.1-T2V-tiny-Diffusers")
  return root, wan_tiny.build(root)


@pytest.mark.parity
def test_tiny_pipeline_matches_diffusers_wan_pipeline(wan, tmp_path):
  """Same weights, noise, steps, shift and CFG: our sampler == WanPipeline + FlowMatchEuler.

  Checks at once the converters, the velocity sign (noise - x0), the schedule, CFG, the
  umT5 text path (tokenizer, zeroed padding, unmasked 512-slot cross-attention) and the
  latent (de)normalisation with Wan's published statistics.
  """
  from sora_jax.sampling import tasks  # pylint: disable=g-import-not-at-top
  from sora_jax.sampling.sample import VideoPipeline  # pylint: disable=g-import-not-at-top
  root, ref_pipe = wan
  cfg = wan_tiny.tiny_config(root)
  s = cfg.sample
  pipe = VideoPipeline(cfg, str(tmp_path))  # An empty workdir: nothing comes from it.
  plan = tasks.t2v(1, tasks.latent_frames(s.num_frames, pipe.temporal),
                   pipe.latent_hwc(s.height, s.width))
  prompts, seed = ["a red circle moves left"], 7
  ours = np.asarray(pipe.denoise(plan, [seed], prompts, s.steps, s.cfg_scale, s.solver))

  noise = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), ours.shape[1:]))[None]
  kw = dict(prompt=prompts, height=s.height, width=s.width, num_frames=s.num_frames,
            num_inference_steps=s.steps, guidance_scale=s.cfg_scale,
            latents=wan_tiny.to_torch_latents(noise), max_sequence_length=cfg.text.max_length)
  ref = ref_pipe(output_type="latent", **kw).frames.numpy().transpose(0, 2, 3, 4, 1)
  err = np.abs(ours - ref).max()

  ref_video = ref_pipe(output_type="np", **kw).frames  # float in [0, 1], (B, F, H, W, 3)
  x, _ = vae_lib.decode_chunked(pipe.vae, {"params": pipe.vae_params},
                                jnp.asarray(ours) * pipe.sigma + pipe.mu)
  err_video = np.abs((np.asarray(x) + 1) / 2 - ref_video).max()
  err_uint8 = np.abs(pipe.decode(jnp.asarray(ours)) / 255.0 - ref_video).max()
  print(f"latents max abs err {err:.2e} (|ref| max {np.abs(ref).max():.2f}); video (0..1) max "
        f"abs err {err_video:.2e}, after uint8 rounding {err_uint8:.2e}; unclamped share "
        f"{((ref_video > 0) & (ref_video < 1)).mean():.2f}")
  assert ours.shape == (1, 2, 4, 4, 16) and np.abs(ref).max() > 1.0
  assert err <= 1e-4, err
  assert err_video <= 1e-4, err_video
  assert err_uint8 <= 0.5 / 255 + 1e-4, err_uint8


def test_sharded_load_equals_unsharded_and_reads_each_slice_once(wan, monkeypatch):
  """8 CPU devices, mesh data=2 x fsdp=2 x tensor=2: every shard equals the whole-model
  conversion, and each tensor is read once, in slices no bigger than a device's share."""
  root, _ = wan
  cfg = wan_tiny.tiny_config(root)
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2, 2
  mesh = mesh_lib.make_mesh(cfg.mesh)
  reads = []
  read = wan_dit._read  # pylint: disable=protected-access

  def counting_read(arr, kind, idx):
    out = read(arr, kind, idx)
    reads.append((arr.shape, out.size))
    return out
  monkeypatch.setattr(wan_dit, "_read", counting_read)
  sharded = weights.load_dit(cfg, mesh)
  monkeypatch.setattr(wan_dit, "_read", read)
  whole = wan_dit.wan_params(
      safetensors_io.read_tensors(os.path.join(root, "transformer")), cfg)

  def check(path, a, b):
    np.testing.assert_array_equal(np.asarray(a), b)
    for shard in a.addressable_shards:
      np.testing.assert_array_equal(np.asarray(shard.data), b[shard.index])
  jax.tree_util.tree_map_with_path(check, sharded, whole)
  fc1 = sharded["blocks"]["ffn"]["fc1"]["kernel"]  # (layers, embed, mlp) -> (-, fsdp, tensor)
  assert fc1.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  assert fc1.addressable_shards[0].data.shape == (2, 12, 24)
  # torch fc1 weights are (48, 24) per layer: read as 4 distinct quarter slices, once each.
  fc1_reads = [n for shape, n in reads if shape == (48, 24)]
  assert sorted(fc1_reads) == [48 * 24 // 4] * 4 * cfg.dit.num_layers, fc1_reads
  total = sum(math.prod(x.shape) for x in jax.tree.leaves(whole))
  assert sum(n for _, n in reads) <= total + 1024  # + small tensors converted whole.


def _copy_with_transformer(root, dest, edit_tensors=None, edit_config=None):
  shutil.copytree(root, dest)
  tdir = os.path.join(dest, "transformer")
  if edit_tensors:
    sd = dict(safetensors_io.read_tensors(tdir))
    edit_tensors(sd)
    path = os.path.join(tdir, "diffusion_pytorch_model.safetensors")
    os.remove(path)
    safetensors_io.write_file(path, {k: np.array(v) for k, v in sd.items()})
  if edit_config:
    with open(os.path.join(tdir, "config.json")) as f:
      hf = json.load(f)
    edit_config(hf)
    with open(os.path.join(tdir, "config.json"), "w") as f:
      json.dump(hf, f)
  return dest


def test_missing_or_mismatched_weights_are_one_line_config_errors(wan, tmp_path):
  root, _ = wan
  cfg = wan_tiny.tiny_config(root)

  def error(c, fn=weights.load_dit):
    with pytest.raises(ConfigError) as e:
      fn(c)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg

  bad = wan_tiny.tiny_config(str(tmp_path / "nowhere"))
  assert "huggingface-cli download" in error(bad)
  no_vae = str(tmp_path / "no_vae")
  shutil.copytree(root, no_vae, ignore=shutil.ignore_patterns("vae"))
  assert "no vae/ folder" in error(wan_tiny.tiny_config(no_vae), weights.load_vae)

  c = wan_tiny.tiny_config(root)
  c.dit.num_layers = 3
  assert "num_layers=2" in error(c) and "dit.num_layers=3" in error(c)
  c = wan_tiny.tiny_config(root)
  c.vae.base_dim = 16
  assert "base_dim=8" in error(c, weights.load_vae)
  c = wan_tiny.tiny_config(root)
  c.text.dim = 48
  assert "text_dim=32" in error(c)
  c = wan_tiny.tiny_config(root)
  c.dit.pooled_text = True
  assert "dit.pooled_text=False" in error(c)
  c = wan_tiny.tiny_config(root)
  c.vae.resample_shortcuts = True
  assert "resample_shortcuts" in error(c, weights.load_vae)

  # Tensors: a missing one and a left-over one are named, config.json agreeing.
  missing = _copy_with_transformer(root, str(tmp_path / "missing"),
                                   lambda sd: sd.pop("blocks.1.attn2.to_k.weight"))
  assert "'blocks.1.attn2.to_k.weight'" in error(wan_tiny.tiny_config(missing))
  extra = _copy_with_transformer(
      root, str(tmp_path / "extra"),
      lambda sd: sd.update({"blocks.2.ffn.net.2.bias": np.zeros(24, np.float32)}))
  assert "'blocks.2.ffn.net.2.bias'" in error(wan_tiny.tiny_config(extra))
  i2v = _copy_with_transformer(root, str(tmp_path / "i2v"), None,
                               lambda hf: hf.update(image_dim=1280))
  assert "image-to-video" in error(wan_tiny.tiny_config(i2v))


def test_latent_stats_from_config_or_vae_config(wan, tmp_path):
  root, _ = wan
  cfg = wan_tiny.tiny_config(root)
  mu, sigma = weights.latent_stats(cfg, str(tmp_path))
  np.testing.assert_allclose(mu[:2], [-0.7571, -0.7089])
  np.testing.assert_allclose(sigma[-1], 1.9160)
  cfg.vae.latents_mean, cfg.vae.latents_std = (), ()
  mu2, sigma2 = weights.latent_stats(cfg, str(tmp_path))  # From vae/config.json.
  np.testing.assert_array_equal(mu, mu2)
  np.testing.assert_array_equal(sigma, sigma2)
  cfg.vae.latents_mean = (0.0,) * 3
  with pytest.raises(ConfigError, match="16 means"):
    weights.latent_stats(cfg, str(tmp_path))


def test_eval_and_vae_training_start_from_the_open_weights_vae(wan, tmp_path):
  """With `weights` and no VAE checkpoint, eval / train_vae use the weights' VAE."""
  from sora_jax.training import train_vae  # pylint: disable=g-import-not-at-top
  root, _ = wan
  cfg = wan_tiny.tiny_config(root)
  vae, params = train_vae.load_vae(cfg, str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, params, weights.load_vae(cfg))
  assert vae.z_dim == 16
  init_state, _ = train_vae.make_state_fns(cfg, vae, None, train_vae.optim.make_optimizer(
      1e-4, 1, 10), None, (1, 5, 16, 16, 3), init_params=params)
  state = jax.eval_shape(init_state)
  assert jax.tree.structure(state["params"]) == jax.tree.structure(params)


def test_entry_point_prints_a_mismatch_as_one_line(wan, tmp_path):
  """The real 1.3B config against the tiny weights: exit 2, one line naming the field."""
  root, _ = wan
  r = subprocess.run(
      [sys.executable, "-m", "sora_jax", "--config=configs/wan2_1_t2v_1_3b.py",
       f"--workdir={tmp_path}", "--mode=sample", f"--config.weights={root}"],
      capture_output=True, text=True, timeout=300, cwd=wan_tiny.ROOT)
  lines = [ln for ln in r.stderr.splitlines() if ln.startswith("sora_jax: error")]
  assert r.returncode == 2, r.stderr[-2000:]
  assert len(lines) == 1 and "num_layers=2" in lines[0] and "dit.num_layers=30" in lines[0], lines


# umT5-XXL (google/umt5-xxl, Wan 2.1's text encoder): the shapes of its config.json.
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                num_heads=64, relative_attention_num_buckets=32,
                relative_attention_max_distance=128, feed_forward_proj="gated-gelu")


def _count(tree):
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(tree)))


@pytest.mark.parity
@pytest.mark.parametrize("name, dit_published", [("wan2_1_t2v_1_3b", 1.42e9),
                                                  ("wan2_1_t2v_14b", 14.29e9)])
def test_wan_configs_shape_check_against_reference_counts(name, dit_published):
  """jax.eval_shape of the full configs: DiT within 1% of the published checkpoint, and
  DiT, VAE and umT5-XXL equal to diffusers'/transformers' models built on the meta device."""
  cfg = wan_tiny.load_config(name)
  n_dit = dit_lib.count_params(cfg)
  vae = vae_lib.vae_from_config(cfg)
  n_vae = _count(jax.eval_shape(lambda: vae_lib.init_variables(vae, jax.random.key(0)))["params"])
  t5 = t5_lib.T5Encoder(t5_lib.T5Config.from_hf(dict(UMT5_XXL, model_type="umt5")))
  ids = jnp.zeros((1, 4), jnp.int32)
  n_t5 = _count(jax.eval_shape(lambda: t5.init(jax.random.key(0), ids, ids > -1))["params"])
  assert t5.cfg.d_model == cfg.text.dim

  with torch.device("meta"):
    ref_dit = diffusers.WanTransformer3DModel(
        num_attention_heads=cfg.dit.num_heads, attention_head_dim=cfg.dit.dim // cfg.dit.num_heads,
        ffn_dim=cfg.dit.ffn_dim, num_layers=cfg.dit.num_layers)
    ref_vae = diffusers.AutoencoderKLWan()
    ref_t5 = transformers.UMT5EncoderModel(transformers.UMT5Config(**UMT5_XXL))
  numel = lambda m: sum(p.numel() for p in m.parameters())
  print(f"{name}: DiT {n_dit:,} VAE {n_vae:,} umT5-XXL {n_t5:,} total {n_dit + n_vae + n_t5:,}")
  assert abs(n_dit - dit_published) / dit_published < 0.01
  assert (n_dit, n_vae, n_t5) == (numel(ref_dit), numel(ref_vae), numel(ref_t5))
  assert list(cfg.vae.latents_mean) == list(ref_vae.config.latents_mean)
  assert list(cfg.vae.latents_std) == list(ref_vae.config.latents_std)
