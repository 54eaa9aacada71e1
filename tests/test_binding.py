"""The binding contrast (diffusion.binding_weight, data.binding_negatives): its negative
texts read back by the independent prompt parser, its hinge against a float64 reference, and
the train step's contrast term against the same step without it."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sora_jax.config_defaults import base_config
from sora_jax.data import encode
from sora_jax.data import shapes_world as sw
from sora_jax.training import benchmark, train

LATENT, TEXT_LEN, BATCH = (3, 4, 4, 4), 6, 8


@pytest.mark.parametrize("swap", ["color_shape", "object"])
@pytest.mark.parametrize("field", ["prompt", "caption"])
def test_swap_subjects_gives_every_other_word_to_the_other_object(field, swap):
  """The parser (independent of the generator) reads the negative as the clip with the two
  objects' color and shape (and with swap='object' size) exchanged and everything else
  where it was."""
  named = ("color", "shape", "size") if swap == "object" else ("color", "shape")
  kept = ("motion",) if swap == "object" else ("size", "motion")
  checked = 0
  for seed in range(300):
    clip = sw.generate_clip(seed, 17, 32, 32, two_object_fraction=1.0)
    spec, text = clip["spec"], clip[field]
    o0, o1 = spec["objects"]
    swapped = sw.swap_subjects(text, spec, swap)
    alike = all(o0.get(k) == o1.get(k) for k in (*kept, "position"))
    if (o0["color"], o0["shape"]) == (o1["color"], o1["shape"]) or alike:
      assert swapped is None, (text, spec)
      continue
    assert swapped is not None and swapped != text, text
    assert sw.swap_subjects(swapped, spec, swap) == text  # exchanging twice gives it back
    parsed = sw.parse_prompt(swapped)["objects"]
    assert len(parsed) == 2, swapped
    for k, got in enumerate(parsed):
      other, same = spec["objects"][1 - k], spec["objects"][k]
      assert all(got[a] == other[a] for a in named), (swapped, got)
      assert all(got[a] == same[a] for a in kept), (swapped, got)
      if field == "prompt":
        assert got.get("position") == same.get("position"), (swapped, got)
    checked += 1
  assert checked > 150


def test_swap_motion_exchanges_only_the_two_motion_phrases():
  """swap='motion': the parser reads the negative prompt as the clip with the two motions
  exchanged and every name, size and the order of mention where they were; the words are
  the same; None where an object is still, both move alike, or the text is a caption."""
  checked = 0
  for seed in range(300):
    clip = sw.generate_clip(seed, 17, 32, 32, two_object_fraction=1.0)
    spec = clip["spec"]
    o0, o1 = spec["objects"]
    assert sw.swap_subjects(clip["caption"], spec, "motion") is None
    swapped = sw.swap_subjects(clip["prompt"], spec, "motion")
    if "still" in (o0["motion"], o1["motion"]) or o0["motion"] == o1["motion"]:
      assert swapped is None, (clip["prompt"], spec)
      continue
    assert swapped is not None and swapped != clip["prompt"], clip["prompt"]
    words = [sorted(re.findall(r"[\w-]+", t)) for t in (swapped, clip["prompt"])]
    assert words[0] == words[1], (swapped, clip["prompt"])
    assert sw.swap_subjects(swapped, {**spec, "objects": [dict(o0, motion=o1["motion"]),
                                                         dict(o1, motion=o0["motion"])]},
                            "motion") == clip["prompt"]
    parsed = sw.parse_prompt(swapped)["objects"]
    assert len(parsed) == 2, swapped
    for k, got in enumerate(parsed):
      same = spec["objects"][k]
      assert all(got[a] == same[a] for a in ("color", "shape", "size")), (swapped, got)
      assert got["motion"] == spec["objects"][1 - k]["motion"], (swapped, got)
      assert "position" not in got, (swapped, got)
    checked += 1
  assert checked > 100


def test_swap_subjects_refuses_what_it_cannot_rebind():
  one = sw.generate_clip(0, 17, 32, 32, two_object_fraction=0.0)
  assert sw.swap_subjects(one["prompt"], one["spec"]) is None  # one object
  two = next(c for c in (sw.generate_clip(s, 17, 32, 32, 1.0) for s in range(50))
             if sw.swap_subjects(c["prompt"], c["spec"]) is not None)
  assert sw.swap_subjects("a green blob and a grey box", two["spec"]) is None  # names absent
  o = two["spec"]["objects"][0]
  assert sw.swap_subjects(two["prompt"], {"objects": [o, dict(o)]}) is None  # alike objects


def test_binding_hinge_matches_a_float64_reference():
  rng = np.random.default_rng(0)
  pos, neg = rng.uniform(0.1, 2.0, 8), rng.uniform(0.1, 2.0, 8)
  valid = np.array([1, 1, 0, 1, 0, 1, 1, 0], bool)
  gap = np.log(neg + 1e-6) - np.log(pos + 1e-6)
  want_hinge = np.sum(np.maximum(np.log(1.2) - gap, 0) * valid) / valid.sum()
  hinge, mean_gap = train.binding_hinge(jnp.asarray(pos, jnp.float32), jnp.asarray(neg, jnp.float32),
                                        jnp.asarray(valid), 0.2)
  np.testing.assert_allclose(float(hinge), want_hinge, rtol=1e-5)
  np.testing.assert_allclose(float(mean_gap), np.sum(gap * valid) / valid.sum(), rtol=1e-5)
  # It pushes the negative's error up and the text's down, only where the margin is unmet.
  d_pos, d_neg = jax.grad(lambda p, n: train.binding_hinge(p, n, jnp.asarray(valid), 0.2)[0],
                          argnums=(0, 1))(jnp.asarray(pos, jnp.float32), jnp.asarray(neg, jnp.float32))
  active = valid & (gap < np.log(1.2))
  assert np.all(np.asarray(d_neg)[active] < 0) and np.all(np.asarray(d_pos)[active] > 0)
  assert np.all(np.asarray(d_neg)[~active] == 0) and np.all(np.asarray(d_pos)[~active] == 0)
  assert float(train.binding_hinge(jnp.ones(2), jnp.ones(2), jnp.zeros(2, bool), 0.2)[0]) == 0.0


def _cfg(weight):
  cfg = base_config()
  cfg.dit.dim, cfg.dit.ffn_dim, cfg.dit.num_heads, cfg.dit.num_layers = 32, 64, 2, 1
  cfg.text.dim, cfg.data.batch_size, cfg.vae.z_dim = 16, BATCH, LATENT[-1]
  cfg.diffusion.caption_dropout, cfg.diffusion.binding_t_min = 0.0, 0.0
  cfg.diffusion.binding_weight, cfg.diffusion.binding_margin = weight, 0.25
  return cfg


def _trainer(cfg, latent=LATENT):
  """(trainer, run(host batch) -> the step's metrics (grads=True: and (1 - b1) * its
  gradient) from the same random, nonzero weights: the DiT's zero-initialised output
  layers would make every text predict alike). `latent`: the (T, H, W, C) it is built for."""
  stats = (np.zeros(latent[-1], np.float32), np.ones(latent[-1], np.float32))
  null = (np.zeros((TEXT_LEN, cfg.text.dim), np.float32), np.eye(1, TEXT_LEN, dtype=bool)[0])
  trainer = train.Trainer(cfg, stats, null, (BATCH, *latent), TEXT_LEN)
  params = jax.device_get(trainer.init_state()["params"])
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: (x + 0.2 * rng.standard_normal(x.shape)).astype(x.dtype), params)

  def run(host, grads=False):
    state = trainer.init_state()
    state["params"] = jax.device_put(params, trainer.state_sharding["params"])
    state, metrics = trainer.step(state, trainer.to_device(host))
    # Adam's first moment after one step is (1 - b1) * the gradient.
    return jax.device_get((metrics, optax.tree_utils.tree_get(state["opt"], "mu"))
                          if grads else metrics)
  return run


def _near_negatives(host, scale):
  """`host` with every field's negative its own text plus scale * N(0, 1) (seeded), all
  valid: near the text, so the hinge is active."""
  rng = np.random.default_rng(2)
  for field, (e, m, v) in encode.NEGATIVE_KEYS.items():
    emb = host[f"{field}_emb"]
    host |= {e: (emb + scale * rng.standard_normal(emb.shape)).astype(emb.dtype),
             m: host[f"{field}_mask"], v: np.ones(BATCH, bool)}
  return host


def _by_name(tree):
  """{'a/b/c': leaf} of a params-shaped tree (flax boxes' attribute keys skipped)."""
  names = lambda p: "/".join(str(k.key) for k in p if isinstance(k, jax.tree_util.DictKey))
  return {names(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_output_layer_as_plain(want, grads):
  """The output layer (proj_out, scale_shift_table) got exactly the plain step's gradient."""
  for n in want:
    if n.startswith(("proj_out/", "scale_shift_table")):
      np.testing.assert_array_equal(grads[n], want[n], err_msg=n)


def _assert_head_trains_the_blocks(want, grads, head, rel):
  """An added term through the head `head` (by name): without it the head's 4 parameters
  get no gradient, with it all of them do; the output layer's gradient is the plain
  step's, and the shared blocks' differs from it by more than `rel` of its size."""
  names = [n for n in want if n.startswith(f"{head}/")]
  assert len(names) == 4 and all(np.all(want[n] == 0) for n in names)
  assert all(np.abs(grads[n]).max() > 0 for n in names)
  _assert_output_layer_as_plain(want, grads)
  fc1 = "blocks/ffn/fc1/kernel"
  assert np.abs(grads[fc1] - want[fc1]).max() > rel * np.abs(want[fc1]).max()


def test_train_step_adds_the_hinge_of_the_negative_text():
  """The contrast changes no draw of the step: with the negative equal to the text the gap
  is 0 and the loss is the plain loss + weight * log(1 + margin); with no valid negative it
  is the plain loss; other negative states give a gap."""
  host = benchmark.synthetic_batch(_cfg(0.5), BATCH, LATENT, TEXT_LEN, seed=3)
  plain = _trainer(_cfg(0.0))(host)
  assert "binding_loss" not in plain
  contrast = _trainer(_cfg(0.5))
  same = dict(host)
  for field, (e, m, _) in encode.NEGATIVE_KEYS.items():
    same |= {e: host[f"{field}_emb"], m: host[f"{field}_mask"]}
  got = contrast(same)
  assert abs(got["binding_gap"]) < 1e-5 and got["binding_frac"] == 1.0
  np.testing.assert_allclose(got["loss"], plain["loss"] + 0.5 * np.log(1.25), rtol=1e-5)
  none_valid = dict(host) | {v: np.zeros(BATCH, bool) for _, _, v in encode.NEGATIVE_KEYS.values()}
  got = contrast(none_valid)
  assert got["binding_frac"] == 0.0 and got["binding_loss"] == 0.0
  np.testing.assert_allclose(got["loss"], plain["loss"], rtol=1e-6)
  got = contrast(host)  # random negative states
  assert abs(got["binding_gap"]) > 1e-3 and got["binding_frac"] == 1.0
  np.testing.assert_allclose(got["loss"], plain["loss"] + 0.5 * got["binding_loss"], rtol=1e-5)


@pytest.mark.parametrize("field", ["caption", "prompt", "both"])
@pytest.mark.parametrize("use", ["caption", "prompt", "both"])
def test_choose_negative_takes_the_trained_texts_negative_of_the_fields_in_use(field, use):
  """Per sample: the negative of the text choose_text picks (same key), valid only where
  that text's negative is valid and its field is in diffusion.binding_field."""
  host = benchmark.synthetic_batch(_cfg(0.5), 64, LATENT, TEXT_LEN, seed=5)
  rng = np.random.default_rng(1)
  host["prompt_emb"] = rng.standard_normal(host["caption_emb"].shape).astype(np.float32)
  for _, _, v in encode.NEGATIVE_KEYS.values():
    host[v] = rng.random(64) < 0.7
  key = jax.random.PRNGKey(7)
  emb, _ = train.choose_text(key, host, field)
  emb, neg_emb, valid = (np.asarray(a) for a in
                         (emb, *train.choose_negative(key, host, field, use)[::2]))
  picks = {f: np.all(emb == host[f"{f}_emb"].astype(np.float32), axis=(1, 2))
           for f in ("caption", "prompt")}
  if field == "both":  # the key picks both fields somewhere in 64 samples
    assert picks["caption"].any() and picks["prompt"].any()
  want = np.zeros(64, bool)
  for f, (e, _, v) in encode.NEGATIVE_KEYS.items():
    if field not in ("both", f):
      continue
    np.testing.assert_array_equal(neg_emb[picks[f]], host[e][picks[f]].astype(np.float32))
    want |= picks[f] & host[v] & (use in ("both", f))
  np.testing.assert_array_equal(valid, want)


def test_binding_field_prompt_ignores_the_captions_negatives():
  """With only the caption's negatives valid, binding_field='prompt' leaves the plain loss,
  and 'caption' uses them (the negative equal to the text: a gap of 0)."""
  host = benchmark.synthetic_batch(_cfg(0.5), BATCH, LATENT, TEXT_LEN, seed=3)
  (ce, cm, cv), (_, _, pv) = encode.NEGATIVE_KEYS["caption"], encode.NEGATIVE_KEYS["prompt"]
  host |= {ce: host["caption_emb"], cm: host["caption_mask"], cv: np.ones(BATCH, bool),
           pv: np.zeros(BATCH, bool)}
  plain = _trainer(_cfg(0.0))(host)
  cfg = _cfg(0.5)
  cfg.diffusion.binding_field = "prompt"
  got = _trainer(cfg)(host)
  assert got["binding_frac"] == 0.0 and got["binding_loss"] == 0.0
  np.testing.assert_allclose(got["loss"], plain["loss"], rtol=1e-6)
  cfg.diffusion.binding_field = "caption"
  got = _trainer(cfg)(host)
  assert got["binding_frac"] > 0.0 and abs(got["binding_gap"]) < 1e-5


@pytest.mark.parametrize("group", ["text", "text_tokens", "cross_attn"])
def test_binding_grad_keeps_the_contrast_off_every_other_parameter(group):
  """diffusion.binding_grad: every parameter outside the group gets the gradient of the
  step without the contrast, the group's get another, and the loss is still the plain
  loss + weight * hinge; with 'all' the video path's gradient changes too."""
  host = _near_negatives(benchmark.synthetic_batch(_cfg(0.5), BATCH, LATENT, TEXT_LEN, seed=3),
                         0.1)

  def step(weight, grad="all"):
    cfg = _cfg(weight)
    cfg.train.grad_clip, cfg.diffusion.binding_grad = 0.0, grad
    metrics, g = _trainer(cfg)(host, grads=True)
    return metrics, _by_name(g)

  (plain, want), (got, grads), (_, every) = step(0.0), step(0.5, group), step(0.5, "all")
  assert got["binding_frac"] == 1.0 and got["binding_loss"] > 0
  np.testing.assert_allclose(got["loss"], plain["loss"] + 0.5 * got["binding_loss"], rtol=1e-5)
  # The group, written out by hand for this (Wan-block, scanned) DiT.
  inside = ("blocks/attn2/to_k/", "blocks/attn2/to_v/", "blocks/attn2/norm_k/",
            "condition_embedder/text_embedder/")
  pooled = group != "text_tokens" and _cfg(0).dit.pooled_text
  if pooled:
    inside += ("condition_embedder/pooled_text_embedder/",)
  if group == "cross_attn":
    inside += ("blocks/attn2/", "blocks/norm2/")
  moved = 0
  for name, g in grads.items():
    if name.startswith(inside):
      assert np.abs(g - want[name]).max() > 1e-6 * np.abs(want[name]).max(), name
      moved += 1
    else:
      np.testing.assert_array_equal(g, want[name], err_msg=name)
  assert moved == (16 if group == "cross_attn" else 9) + 4 * bool(pooled), moved
  fc1 = "blocks/ffn/fc1/kernel"
  assert np.abs(every[fc1] - want[fc1]).max() > 1e-3 * np.abs(want[fc1]).max()


def test_binding_match_matches_a_float64_reference():
  rng = np.random.default_rng(4)
  pos, neg = rng.normal(0, 2, 8), rng.normal(0, 2, 8)
  valid = np.array([1, 0, 1, 1, 0, 1, 1, 1], bool)
  want = np.sum((np.logaddexp(0, -pos) + np.logaddexp(0, neg)) * valid) / valid.sum()
  loss, margin, acc = train.binding_match(jnp.asarray(pos, jnp.float32),
                                          jnp.asarray(neg, jnp.float32), jnp.asarray(valid))
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  np.testing.assert_allclose(float(margin), np.sum((pos - neg) * valid) / valid.sum(), rtol=1e-5)
  assert float(acc) == np.sum((pos > neg) & valid) / valid.sum()
  # It raises the text's logit and lowers the negative's, on valid samples only.
  d_pos, d_neg = jax.grad(lambda p, n: train.binding_match(p, n, jnp.asarray(valid))[0],
                          argnums=(0, 1))(jnp.asarray(pos, jnp.float32), jnp.asarray(neg, jnp.float32))
  assert np.all(np.asarray(d_pos)[valid] < 0) and np.all(np.asarray(d_neg)[valid] > 0)
  assert np.all(np.asarray(d_pos)[~valid] == 0) and np.all(np.asarray(d_neg)[~valid] == 0)
  assert float(train.binding_match(jnp.ones(2), jnp.ones(2), jnp.zeros(2, bool))[0]) == 0.0


def test_match_contrast_trains_the_head_and_blocks_but_not_the_output_layer():
  """diffusion.binding_loss='match': the loss is the plain loss + weight * the matching
  head's logistic loss; its gradient reaches the head and the shared blocks, and leaves the
  output layer (proj_out, scale_shift_table) with exactly the plain step's gradient, so the
  prediction is not pushed off its mean directly. Without the contrast the head gets none."""
  host = _near_negatives(benchmark.synthetic_batch(_cfg(0.5), BATCH, LATENT, TEXT_LEN, seed=3),
                         0.5)

  def step(weight, batch):
    cfg = _cfg(weight)
    cfg.train.grad_clip, cfg.dit.match_head, cfg.diffusion.binding_loss = 0.0, True, "match"
    metrics, g = _trainer(cfg)(batch, grads=True)
    return metrics, _by_name(g)

  (plain, want), (got, grads) = step(0.0, host), step(0.5, host)
  assert "binding_loss" not in plain and got["binding_frac"] == 1.0
  np.testing.assert_allclose(got["loss"], plain["loss"] + 0.5 * got["binding_loss"], rtol=1e-5)
  assert 0.0 <= got["binding_acc"] <= 1.0 and abs(got["binding_gap"]) > 1e-4
  _assert_head_trains_the_blocks(want, grads, "match_head", 1e-3)
  # The negative equal to the text: equal logits, and the loss is at least 2 log 2.
  same = dict(host)
  for field, (e, m, _) in encode.NEGATIVE_KEYS.items():
    same |= {e: host[f"{field}_emb"], m: host[f"{field}_mask"]}
  got, _ = step(0.5, same)
  assert abs(got["binding_gap"]) < 1e-5 and got["binding_acc"] == 0.0
  assert got["binding_loss"] >= 2 * np.log(2) - 1e-5


def test_project_conflict_matches_a_float64_reference():
  rng = np.random.default_rng(6)
  tree = lambda: {"a": rng.standard_normal((3, 4)), "b": {"c": rng.standard_normal(5)}}
  flat = lambda t: np.concatenate([t["a"].ravel(), t["b"]["c"]])
  m, e = tree(), tree()
  for sign in (1.0, -1.0):
    e2 = jax.tree.map(lambda x, y: sign * np.abs(np.sign(np.vdot(flat(m), flat(e)))) * y, m, e)
    fm, fe = flat(m), flat(e2)
    d = np.vdot(fm, fe)
    want = fm + fe - (min(d, 0.0) / np.vdot(fm, fm)) * fm
    out, cos = train.project_conflict(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), m),
                                      jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), e2))
    np.testing.assert_allclose(flat(jax.device_get(out)), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(cos), d / np.linalg.norm(fm) / np.linalg.norm(fe), rtol=1e-5)
  # What is added to g_main never points against it.
  assert np.vdot(want - fm, fm) >= -1e-9


@pytest.mark.parametrize("loss", ["hinge", "match"])
def test_binding_project_removes_the_contrasts_conflict_with_the_denoising_gradient(loss):
  """diffusion.binding_project: the step's gradient is the plain step's plus the contrast's
  (the full step's less the plain one's), projected off the plain gradient where they
  conflict: a float64 reference from the unprojected steps. The loss is unchanged."""
  host = _near_negatives(benchmark.synthetic_batch(_cfg(0.5), BATCH, LATENT, TEXT_LEN, seed=3),
                         0.1)

  def step(weight, project=False):
    cfg = _cfg(weight)
    cfg.train.grad_clip, cfg.diffusion.binding_project = 0.0, project
    cfg.dit.match_head, cfg.diffusion.binding_loss = True, loss
    metrics, mu = _trainer(cfg)(host, grads=True)
    return metrics, np.concatenate([np.ravel(x) for x in jax.tree.leaves(mu)]).astype(np.float64)

  # A large weight, so the contrast's gradient is comparable to the plain one's.
  (plain, g_plain), (full, g_full), (got, g_got) = step(0.0), step(20.0), step(20.0, True)
  g_extra = g_full - g_plain
  d = np.vdot(g_plain, g_extra)
  want = g_plain + g_extra - min(d, 0.0) / np.vdot(g_plain, g_plain) * g_plain
  np.testing.assert_allclose(got["loss"], full["loss"], rtol=1e-6)
  np.testing.assert_allclose(got["binding_cos"], d / np.linalg.norm(g_plain) / np.linalg.norm(g_extra),
                             rtol=1e-3, atol=1e-4)
  scale = np.abs(want).max()
  np.testing.assert_allclose(g_got, want, rtol=0, atol=1e-4 * scale)
  removed = np.abs(min(d, 0.0) / np.vdot(g_plain, g_plain) * g_plain).max()
  assert removed > 10 * 1e-4 * scale  # the check above tells the projection from none
