"""The DiT: shapes at any size/aspect, per-frame timesteps, scan == no scan, RoPE, sharding."""
import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.config_defaults import base_config
from sora_jax.models import dit

ROOT = os.path.join(os.path.dirname(__file__), "..")


def tiny_cfg(**dit_overrides):
  cfg = base_config()
  cfg.dit.dim, cfg.dit.num_heads, cfg.dit.ffn_dim, cfg.dit.num_layers = 48, 2, 96, 2
  cfg.dit.freq_dim = 32
  cfg.vae.z_dim, cfg.text.dim = 4, 16
  for k, v in dit_overrides.items():
    cfg.dit[k] = v
  return cfg


def random_params(cfg, seed=0):
  """Initialised, then every leaf perturbed: the zero-init head would make outputs trivially 0."""
  model = dit.dit_from_config(cfg)

  @jax.jit
  def init(key):
    params = nn.unbox(model.init(key, *dit.example_inputs(cfg))["params"])
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    return tree.unflatten([p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])

  return model, init(jax.random.key(seed))


def inputs(b, t, h, w, c=4, text_len=5, text_dim=16, seed=0):
  r = np.random.default_rng(seed)
  return (r.standard_normal((b, t, h, w, c)).astype(np.float32),
          r.uniform(size=(b, t)).astype(np.float32),
          r.standard_normal((b, text_len, text_dim)).astype(np.float32))


@pytest.fixture(scope="module")
def tiny():
  cfg = tiny_cfg()
  model, params = random_params(cfg)
  return cfg, model, params, jax.jit(model.apply)


@pytest.mark.parametrize("shape", [(1, 4, 6), (1, 8, 8), (3, 4, 10), (5, 6, 4)])
def test_output_matches_input_shape_image_and_video(tiny, shape):
  _, _, params, apply = tiny
  x, t, text = inputs(2, *shape)
  out = apply({"params": params}, x, t, text)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()


def test_per_frame_timesteps(tiny):
  """t_B == t_BT with equal frames; changing frame j's t changes frame j's output."""
  _, _, params, apply = tiny
  x, t, text = inputs(2, 3, 4, 6)
  v = {"params": params}
  same = np.full((2, 3), 0.4, np.float32)
  np.testing.assert_allclose(np.asarray(apply(v, x, same, text)),
                             np.asarray(apply(v, x, same[:, 0], text)), atol=1e-6)
  base = np.asarray(apply(v, x, t, text))
  t2 = t.copy()
  t2[:, 1] = 0.0  # Frame 1 becomes a clean conditioning frame.
  moved = np.abs(np.asarray(apply(v, x, t2, text)) - base).max(axis=(2, 3, 4))  # (B, T)
  assert (moved[:, 1] > 1e-3).all(), moved


def test_masked_text_tokens_are_ignored(tiny):
  _, _, params, apply = tiny
  x, t, text = inputs(2, 1, 4, 4)
  mask = np.ones((2, 5), bool)
  mask[:, 3:] = False
  other = text.copy()
  other[:, 3:] = 100.0
  a = apply({"params": params}, x, t, text, mask)
  b = apply({"params": params}, x, t, other, mask)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("pooled", [True, False])
def test_pooled_text_conditions_every_block(pooled):
  """With cross-attention silenced, the caption still reaches the output only through the
  pooled-text path (dit.pooled_text)."""
  cfg = tiny_cfg(pooled_text=pooled)
  model, params = random_params(cfg)
  assert ("pooled_text_embedder" in params["condition_embedder"]) == pooled
  params["blocks"]["attn2"]["to_out"] = jax.tree.map(jnp.zeros_like,
                                                     params["blocks"]["attn2"]["to_out"])
  x, t, text = inputs(1, 2, 4, 4)
  a = np.asarray(model.apply({"params": params}, x, t, text))
  b = np.asarray(model.apply({"params": params}, x, t, text[:, ::-1] * 2.0 + 1.0))
  assert (np.abs(a - b).max() > 1e-3) == pooled


def test_scan_and_unrolled_layers_agree(tiny):
  cfg, _, params, apply = tiny
  x, t, text = inputs(1, 3, 4, 6)
  unrolled = dict(params)
  blocks = unrolled.pop("blocks")
  for i in range(cfg.dit.num_layers):
    unrolled[f"blocks_{i}"] = jax.tree.map(lambda p, i=i: p[i], blocks)
  model2 = dit.dit_from_config(tiny_cfg(scan_layers=False))
  shapes = nn.unbox(dit.param_shapes(tiny_cfg(scan_layers=False)))
  assert jax.tree.structure(shapes) == jax.tree.structure(unrolled)
  np.testing.assert_allclose(np.asarray(jax.jit(model2.apply)({"params": unrolled}, x, t, text)),
                             np.asarray(apply({"params": params}, x, t, text)), atol=1e-5)


def test_unrolled_scan_keeps_parameters_values_and_gradients(tiny):
  """dit.scan_unroll=0 (speed) reads the same stacked tree and computes the same function."""
  cfg, _, params, _ = tiny
  x, t, text = inputs(2, 2, 4, 4)
  assert (jax.tree.map(np.shape, nn.unbox(dit.param_shapes(tiny_cfg(scan_unroll=0))))
          == jax.tree.map(np.shape, params))

  def grads(unroll):
    model = dit.dit_from_config(tiny_cfg(scan_unroll=unroll))
    loss = lambda p: jnp.sum(model.apply({"params": p}, x, t, text) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  (ref_loss, ref_g), (loss, g) = grads(1), grads(0)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g, ref_g)
  with pytest.raises(ValueError, match="scan_unroll=-1"):
    dit.dit_from_config(tiny_cfg(scan_unroll=-1)).apply({"params": params}, x, t, text)


def test_remat_keeps_values_and_gradients(tiny):
  cfg, _, params, _ = tiny
  x, t, text = inputs(1, 1, 4, 4)

  def grads(policy):
    model = dit.dit_from_config(tiny_cfg(remat_policy=policy))
    loss = lambda p: jnp.sum(model.apply({"params": p}, x, t, text) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  ref_loss, ref_g = grads("none")
  loss, g = grads("full")
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g, ref_g)


def test_bfloat16_compute_tracks_float32(tiny):
  _, _, params, apply = tiny
  x, t, text = inputs(1, 3, 4, 4)
  ref = np.asarray(apply({"params": params}, x, t, text))
  model = dit.dit_from_config(tiny_cfg(dtype="bfloat16"))
  out = np.asarray(jax.jit(model.apply)({"params": params}, x, t, text))
  assert out.dtype == np.float32
  assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()


def test_rope_is_relative_at_any_size():
  """q.k after RoPE depends on position differences only, far past Wan's 1024 positions."""
  head = 24
  cos, sin = dit.rope_tables(3, 5, 1500, head)
  assert cos.shape == (3 * 5 * 1500, head // 2) and np.isfinite(np.asarray(cos)).all()
  r = np.random.default_rng(0)
  q, k = (jnp.asarray(r.standard_normal((1, 1, 1, head)), jnp.float32) for _ in range(2))

  def dot(pq, pk):  # Positions (f, h, w) on the 3 x 5 x 1500 grid.
    iq, ik = (np.ravel_multi_index(p, (3, 5, 1500)) for p in (pq, pk))
    rq = dit.apply_rope(q, cos[iq:iq + 1], sin[iq:iq + 1])
    rk = dit.apply_rope(k, cos[ik:ik + 1], sin[ik:ik + 1])
    return float(jnp.sum(rq * rk))

  a = dot((0, 1, 3), (1, 2, 10))
  np.testing.assert_allclose(dot((1, 3, 1203), (2, 4, 1210)), a, rtol=1e-4)
  assert abs(dot((0, 1, 3), (1, 2, 11)) - a) > 1e-4  # ... and does depend on them.


def test_logical_partitioning_shards_by_config_rules():
  """Every param is named; sharding by the config's rules on a 2x2x2 mesh keeps the output."""
  cfg = tiny_cfg()
  model = dit.dit_from_config(cfg)
  boxed = dit.param_shapes(cfg)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda a: isinstance(a, nn.Partitioned))
  assert all(isinstance(a, nn.Partitioned) and len(a.names) == a.value.ndim for a in leaves)
  assert all(a.names[0] == "layers" for a in jax.tree.leaves(
      boxed["blocks"], is_leaf=lambda a: isinstance(a, nn.Partitioned)))
  _, params = random_params(cfg)
  x, t, text = inputs(2, 3, 4, 4)
  ref = np.asarray(jax.jit(model.apply)({"params": params}, x, t, text))
  mesh = jax.make_mesh((2, 2, 1, 2), ("data", "fsdp", "sequence", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 4)
  rules = tuple(cfg.mesh.rules)
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  sharded = jax.device_put(params, shardings)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    out = jax.jit(model.apply)({"params": sharded}, x, t, text)
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


def _load_config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


# Published checkpoint sizes: Wan2.1-T2V-1.3B's DiT is 2.84 GB and T2V-14B's 28.6 GB in
# bf16 (2 bytes a parameter), i.e. 1.42B and 14.3B parameters ("1.3B"/"14B" are names).
@pytest.mark.parametrize("name, published", [("dit_1_3b", 1.42e9), ("dit_14b", 14.3e9)])
def test_scale_configs_match_published_parameter_counts(name, published):
  n = dit.count_params(_load_config(name))  # jax.eval_shape: nothing allocated.
  assert abs(n - published) / published < 0.01, n


@pytest.mark.parametrize("joint", [False, True])
def test_count_flops_matches_xla_cost_analysis(joint):
  # Unrolled layers: XLA's cost analysis counts a scan's loop body once.
  cfg = tiny_cfg(scan_layers=False, joint_attention=joint)
  model = dit.dit_from_config(cfg)
  params = nn.unbox(dit.param_shapes(cfg))
  x, t, text = inputs(1, 5, 8, 8, text_len=32)
  xla = jax.jit(model.apply).lower({"params": params}, x, t, text).compile().cost_analysis()
  xla = xla[0] if isinstance(xla, list) else xla
  ours = dit.count_flops(cfg, 5, 8, 8, 32)
  # XLA also counts elementwise work (norms, softmax, RoPE) that the analytic count skips.
  assert 0.7 * xla["flops"] < ours <= xla["flops"], (ours, xla["flops"])


def test_blockwise_attention_with_configured_tile_equals_xla(tiny):
  """dit.attention='blockwise' with a small dit.attention_block tiles 3x4x6 = 72 tokens."""
  _, _, params, apply = tiny
  x, t, text = inputs(1, 3, 4, 6)
  model = dit.dit_from_config(tiny_cfg(attention="blockwise", attention_block=16))
  assert model.attention_block == 16
  np.testing.assert_allclose(np.asarray(jax.jit(model.apply)({"params": params}, x, t, text)),
                             np.asarray(apply({"params": params}, x, t, text)), atol=1e-5)


def test_text_refiner_starts_as_the_identity_and_learns():
  """dit.text_refiner_layers adds blocks over the text tokens whose residual gates start at
  0: a fresh refiner leaves a DiT's outputs unchanged (so it can be added to a trained
  model), its gates get gradients, and with open gates it changes the output and still
  ignores masked text slots."""
  cfg = tiny_cfg(text_refiner_layers=2)
  model = dit.dit_from_config(cfg)
  plain = dit.dit_from_config(tiny_cfg())
  x, t, text = inputs(2, 1, 4, 4)
  mask = np.ones((2, 5), bool)
  mask[:, 3:] = False
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), x, t, text, mask)["params"])
  _, other = random_params(tiny_cfg())
  params = {**other, "text_refiner": params["text_refiner"]}
  base = {k: v for k, v in params.items() if k != "text_refiner"}
  apply = jax.jit(model.apply)
  np.testing.assert_allclose(apply({"params": params}, x, t, text, mask),
                             jax.jit(plain.apply)({"params": base}, x, t, text, mask), atol=1e-6)
  grads = jax.grad(lambda p: jnp.sum(apply({"params": p}, x, t, text, mask) ** 2))(params)
  assert float(jnp.abs(grads["text_refiner"]["gate_attn_0"]).max()) > 0
  assert float(jnp.abs(grads["text_refiner"]["gate_ffn_1"]).max()) > 0
  params["text_refiner"] = jax.tree.map(lambda g: g + 0.5, params["text_refiner"])
  a = apply({"params": params}, x, t, text, mask)
  assert float(jnp.abs(a - apply({"params": base | {"text_refiner": jax.tree.map(
      jnp.zeros_like, params["text_refiner"])}}, x, t, text, mask)).max()) > 1e-3
  other_text = text.copy()
  other_text[:, 3:] = 100.0
  np.testing.assert_allclose(a, apply({"params": params}, x, t, other_text, mask), atol=1e-5)


def test_text_refiner_gate_init_opens_the_gates():
  """dit.text_refiner_gate_init sets every residual gate's initial value: at 1 the refiner's
  blocks act (and their weights get gradients) from the first step; init_text_refiner
  gives the same parameters as the whole model's init would hold."""
  cfg = tiny_cfg(text_refiner_layers=1, text_refiner_gate_init=1.0)
  model = dit.dit_from_config(cfg)
  x, t, text = inputs(2, 1, 4, 4)
  mask = np.ones((2, 5), bool)
  refiner = nn.unbox(jax.jit(model.init)(jax.random.key(0), x, t, text, mask)["params"])["text_refiner"]
  for name in ("gate_attn_0", "gate_ffn_0"):
    np.testing.assert_array_equal(refiner[name], np.ones(cfg.dit.dim, np.float32))
  _, other = random_params(tiny_cfg())
  params = {**other, "text_refiner": refiner}
  grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x, t, text, mask) ** 2))(params)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["text_refiner"]["attn_0"]))
  fresh = dit.init_text_refiner(cfg)
  np.testing.assert_array_equal(fresh["gate_ffn_0"], np.ones(cfg.dit.dim, np.float32))
  assert jax.tree.structure(fresh) == jax.tree.structure(refiner)


def _np_joint_block(p, x, txt, mask, mod, cos, sin, heads, eps=1e-6):
  """NumPy reference of one double-stream block (SD3's JointTransformerBlock with per-frame
  adaLN, 3D RoPE on the video q/k): written from the formulas, not from dit.py."""
  gelu = lambda a: 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a ** 3)))
  ln = lambda a: (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + eps)
  rms = lambda a, w: a / np.sqrt((a ** 2).mean(-1, keepdims=True) + eps) * w
  lin = lambda a, q: a @ np.asarray(q["kernel"]) + np.asarray(q["bias"])
  b, l, d = x.shape
  f = mod.shape[1]
  per_tok = lambda m: np.repeat(m, l // f, axis=1)  # (B, F, D) -> (B, L, D), frame-major.
  e = np.asarray(p["scale_shift_table"])[None, None] + mod  # (B, F, 6, D)
  et = np.asarray(p["text_scale_shift_table"])[None] + mod.mean(1)  # (B, 6, D)
  ev = [per_tok(e[:, :, i]) for i in range(6)]
  etx = [et[:, None, i] for i in range(6)]
  a = p["attn"]
  h = ln(x) * (1 + ev[1]) + ev[0]
  ht = ln(txt) * (1 + etx[1]) + etx[0]
  q, k, v = (lin(h, a[n]) for n in ("to_q", "to_k", "to_v"))
  qt, kt, vt = (lin(ht, a[n]) for n in ("add_q_proj", "add_k_proj", "add_v_proj"))
  q, k = rms(q, np.asarray(a["norm_q"]["scale"])), rms(k, np.asarray(a["norm_k"]["scale"]))
  qt = rms(qt, np.asarray(a["norm_added_q"]["scale"]))
  kt = rms(kt, np.asarray(a["norm_added_k"]["scale"]))
  hd = d // heads
  def rope(z):  # Interleaved pairs as complex numbers times e^{i angle}.
    zc = z.reshape(b, l, heads, hd // 2, 2)
    zc = (zc[..., 0] + 1j * zc[..., 1]) * (cos + 1j * sin)[None, :, None]
    return np.stack([zc.real, zc.imag], -1).reshape(b, l, heads, hd)
  q, k = rope(q.reshape(b, l, heads, hd)), rope(k.reshape(b, l, heads, hd))
  s = txt.shape[1]
  qa = np.concatenate([q, qt.reshape(b, s, heads, hd)], 1)
  ka = np.concatenate([k, kt.reshape(b, s, heads, hd)], 1)
  va = np.concatenate([v.reshape(b, l, heads, hd), vt.reshape(b, s, heads, hd)], 1)
  logits = np.einsum("bqhd,bkhd->bhqk", qa, ka) / np.sqrt(hd)
  keep = np.concatenate([np.ones((b, l), bool), mask], 1)[:, None, None]
  logits = np.where(keep, logits, -np.inf)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  o = np.einsum("bhqk,bkhd->bqhd", w / w.sum(-1, keepdims=True), va).reshape(b, l + s, d)
  x = x + lin(o[:, :l], a["to_out"]) * ev[2]
  txt = txt + lin(o[:, l:], a["to_add_out"]) * etx[2]
  mlp = lambda z, q: lin(gelu(lin(z, q["fc1"])), q["fc2"])
  x = x + mlp(ln(x) * (1 + ev[4]) + ev[3], p["ffn"]) * ev[5]
  txt = txt + mlp(ln(txt) * (1 + etx[4]) + etx[3], p["ffn_text"]) * etx[5]
  return x, txt


def test_joint_block_matches_numpy_reference():
  """dit.JointBlock (double-stream MMDiT block) against a NumPy re-derivation: per-frame
  modulation of the video stream, frame-averaged modulation of the text stream, one masked
  softmax over video + text tokens, RoPE on the video q/k only."""
  d, heads, ffn, f, gh, gw, s = 48, 2, 96, 2, 2, 3, 5
  l = f * gh * gw
  r = np.random.default_rng(0)
  x = r.standard_normal((2, l, d)).astype(np.float32)
  txt = r.standard_normal((2, s, d)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  mod = (0.3 * r.standard_normal((2, f, 6, d))).astype(np.float32)
  cos, sin = dit.rope_tables(f, gh, gw, d // heads)
  block = dit.JointBlock(d, ffn, heads, True, 1e-6, 0.0, True, "xla", jnp.float32, jnp.float32)
  params = nn.unbox(block.init(jax.random.key(0), (x, txt), mask, mod, cos, sin)["params"])
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = tree.unflatten([p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  (got_x, got_t), _ = jax.jit(block.apply)({"params": params}, (x, txt), mask, mod, cos, sin)
  want_x, want_t = _np_joint_block(jax.tree.map(np.asarray, params), x.astype(np.float64),
                                   txt.astype(np.float64), mask, mod.astype(np.float64),
                                   np.asarray(cos, np.float64), np.asarray(sin, np.float64), heads)
  np.testing.assert_allclose(np.asarray(got_x), want_x, rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(np.asarray(got_t)[mask], want_t[mask], rtol=2e-4, atol=2e-4)


def test_joint_attention_model_uses_text_ignores_padding_and_trains_both_streams():
  """dit.joint_attention: the whole DiT with double-stream blocks reads its prompt, ignores
  masked text slots, gets gradients in both streams' weights; ring/ulysses are refused."""
  cfg = tiny_cfg(joint_attention=True)
  model, params = random_params(cfg)
  assert "attn2" not in params["blocks"] and "ffn_text" in params["blocks"]
  apply = jax.jit(model.apply)
  x, t, text = inputs(2, 2, 4, 4)
  mask = np.ones((2, 5), bool)
  mask[:, 3:] = False
  out = apply({"params": params}, x, t, text, mask)
  padded = text.copy()
  padded[:, 3:] = 100.0
  np.testing.assert_allclose(out, apply({"params": params}, x, t, padded, mask), atol=1e-5)
  other = text.copy()
  other[:, 1] += 1.0
  assert float(jnp.abs(out - apply({"params": params}, x, t, other, mask)).max()) > 1e-3
  grads = jax.grad(lambda p: jnp.sum(apply({"params": p}, x, t, text, mask) ** 2))(params)
  for name in ("add_q_proj", "to_add_out", "to_q"):
    assert float(jnp.abs(grads["blocks"]["attn"][name]["kernel"]).max()) > 0, name
  assert float(jnp.abs(grads["blocks"]["ffn_text"]["fc1"]["kernel"]).max()) > 0
  with pytest.raises(ValueError, match="joint_attention"):
    dit.dit_from_config(tiny_cfg(joint_attention=True, attention="ring")).init(
        jax.random.key(0), *dit.example_inputs(cfg))


def test_match_head_reads_the_hidden_states_and_leaves_the_prediction_alone():
  """dit.match_head: the DiT's prediction is the one without the head (same parameters),
  the head's (B,) logits follow a numpy reference of MatchHead (LayerNorm, dim -> dim,
  SiLU, dim -> 1, mean over tokens) and change with the text; asking a DiT without the
  head for them is a clear error."""
  cfg = tiny_cfg(match_head=True)
  model, params = random_params(cfg)
  plain = dit.dit_from_config(tiny_cfg())
  x, t, text = inputs(2, 1, 4, 4)
  base = {k: v for k, v in params.items() if k != "match_head"}
  out, logit = jax.jit(lambda p, *a: model.apply({"params": p}, *a, return_match=True))(
      params, x, t, text)
  np.testing.assert_array_equal(out, jax.jit(plain.apply)({"params": base}, x, t, text))
  assert logit.shape == (2,)
  _, logit2 = model.apply({"params": params}, x[::-1], t[::-1], text[::-1], return_match=True)
  assert float(jnp.abs(logit2 - logit[::-1]).max()) < 1e-5  # per sample
  _, logit3 = model.apply({"params": params}, x, t, text + 1.0, return_match=True)
  assert float(jnp.abs(logit3 - logit).max()) > 1e-4
  head = dit.MatchHead(cfg.dit.dim, cfg.dit.eps, jnp.float32, jnp.float32)
  h = np.random.default_rng(3).standard_normal((2, 7, cfg.dit.dim)).astype(np.float32)
  p = jax.tree.map(np.asarray, params["match_head"])
  z = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + cfg.dit.eps)
  a = z @ p["fc1"]["kernel"] + p["fc1"]["bias"]
  want = ((a / (1 + np.exp(-a))) @ p["fc2"]["kernel"] + p["fc2"]["bias"])[..., 0].mean(1)
  np.testing.assert_allclose(head.apply({"params": params["match_head"]}, h), want,
                             rtol=1e-4, atol=1e-5)
  fresh = dit.init_match_head(cfg, 0)
  assert jax.tree.map(np.shape, fresh) == jax.tree.map(np.shape, params["match_head"])
  with pytest.raises(ValueError, match="needs a DiT with match_head=True"):
    plain.apply({"params": base}, x, t, text, return_match=True)


def test_motion_head_reads_the_hidden_states_and_leaves_the_prediction_alone():
  """dit.motion_head: the prediction is the one without the head (same parameters); the
  head gives one row of len(MOTIONS) logits per token, laid out (B, T/pt, H/ph, W/pw, K)
  in the patch order of the prediction's own unpatchify, and follows a numpy reference of
  MotionHead (LayerNorm, dim -> dim, SiLU, dim -> K) on the final hidden states; with the
  match head too, both come back after the prediction; asking a DiT without the head for
  its logits is a clear error."""
  from sora_jax.data import shapes_world  # pylint: disable=g-import-not-at-top
  k = len(shapes_world.MOTIONS)
  # Unscanned layers, so flax records the last block's output (the final hidden states).
  cfg = tiny_cfg(motion_head=True, scan_layers=False)
  model, params = random_params(cfg)
  plain = dit.dit_from_config(tiny_cfg(scan_layers=False))
  x, t, text = inputs(2, 2, 4, 6)
  base = {n: v for n, v in params.items() if n != "motion_head"}
  out, logits = jax.jit(lambda p, *a: model.apply({"params": p}, *a, return_motion=True))(
      params, x, t, text)
  np.testing.assert_array_equal(out, jax.jit(plain.apply)({"params": base}, x, t, text))
  assert logits.shape == (2, 2, 2, 3, k)
  # The head on the final hidden states, as flax records them, in token order (f, gh, gw).
  _, state = model.apply({"params": params}, x, t, text, return_motion=True,
                         capture_intermediates=lambda mdl, _: mdl.name == "blocks_1",
                         mutable=["intermediates"])
  h = np.asarray(state["intermediates"]["blocks_1"]["__call__"][0][0])  # (B, L, dim)
  p = jax.tree.map(np.asarray, params["motion_head"])
  z = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + cfg.dit.eps)
  a = z @ p["fc1"]["kernel"] + p["fc1"]["bias"]
  want = (a / (1 + np.exp(-a))) @ p["fc2"]["kernel"] + p["fc2"]["bias"]  # (B, L, K)
  for f in range(2):
    for i in range(2):
      for j in range(3):
        np.testing.assert_allclose(logits[:, f, i, j], want[:, f * 6 + i * 3 + j], rtol=1e-4,
                                   atol=1e-4)
  both = dit.dit_from_config(tiny_cfg(motion_head=True, match_head=True, scan_layers=False))
  both_params = {**params, "match_head": dit.init_match_head(tiny_cfg(match_head=True), 0)}
  got = both.apply({"params": both_params}, x, t, text, return_match=True, return_motion=True)
  assert len(got) == 3 and got[1].shape == (2,)
  np.testing.assert_allclose(got[2], logits, rtol=1e-5, atol=1e-5)
  fresh = dit.init_motion_head(cfg, 0)
  assert jax.tree.map(np.shape, fresh) == jax.tree.map(np.shape, params["motion_head"])
  with pytest.raises(ValueError, match="needs a DiT with a motion head"):
    plain.apply({"params": base}, x, t, text, return_motion=True)


def test_motion_head_layer_reads_that_blocks_output_scanned_or_not():
  """dit.motion_head_layer=1: the head reads the first block's output (as flax records it,
  unscanned), the scanned DiT with the same weights stacked gives the same logits and
  prediction, and the prediction is the one without the head; a layer past num_layers is
  a clear error."""
  from sora_jax import config_check  # pylint: disable=g-import-not-at-top
  cfg = tiny_cfg(motion_head=True, motion_head_layer=1, scan_layers=False)
  model, params = random_params(cfg)
  x, t, text = inputs(2, 2, 4, 4)
  out, logits = model.apply({"params": params}, x, t, text, return_motion=True)
  _, state = model.apply({"params": params}, x, t, text, return_motion=True,
                         capture_intermediates=lambda mdl, _: mdl.name == "blocks_0",
                         mutable=["intermediates"])
  h = state["intermediates"]["blocks_0"]["__call__"][0][0]
  want = dit.MotionHead(cfg.dit.dim, logits.shape[-1], cfg.dit.eps, jnp.float32,
                        jnp.float32).apply({"params": params["motion_head"]}, h)
  np.testing.assert_allclose(logits.reshape(want.shape), want, rtol=1e-5, atol=1e-5)
  plain = dit.dit_from_config(tiny_cfg(scan_layers=False))
  base = {n: v for n, v in params.items() if n != "motion_head"}
  np.testing.assert_array_equal(out, plain.apply({"params": base}, x, t, text))
  scanned = dit.dit_from_config(tiny_cfg(motion_head=True, motion_head_layer=1))
  stacked = {n: v for n, v in params.items() if not n.startswith("blocks_")}
  stacked["blocks"] = jax.tree.map(lambda *a: jnp.stack(a), params["blocks_0"], params["blocks_1"])
  out2, logits2 = scanned.apply({"params": stacked}, x, t, text, return_motion=True)
  np.testing.assert_allclose(out2, out, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(logits2, logits, rtol=1e-4, atol=1e-5)
  bad = tiny_cfg(motion_head=True, motion_head_layer=3)
  with pytest.raises(config_check.ConfigError, match="motion_head_layer=3: give a number of "
                     "blocks in 1..2"):
    config_check.check(bad, "train")
