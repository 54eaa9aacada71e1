"""`--mode=train`: trains the latent diffusion transformer with the rectified-flow objective.

Reads the encoded data set written by `--mode=encode` (VAE latent mean/std + text
embeddings), so the VAE and text encoder never run in the training loop. Per step:
sample z ~ N(mean, std), normalise with the measured latent statistics, pick caption or
prompt embedding, drop captions for CFG, sample logit-normal shifted t and a conditioning
mask (conditioned latent frames stay clean, t = 0), and minimise the velocity MSE.

The step is `jax.jit` with explicit in/out shardings from the config's logical rules and
a donated state; parameters are born sharded.

Warm start (`train.init_from`, a sora_jax workdir): the DiT starts from that workdir's
newest EMA weights, with a fresh optimizer and step 0; a text refiner (dit.text_refiner_layers)
the checkpoint lacks starts from its init (with dit.text_refiner_gate_init = 0, the default,
the outputs start unchanged).

Fine-tuning open weights (`config.weights`, e.g. Wan 2.1): the DiT starts from the loaded
parameters (each host reads its own shards), and with `train.lora_rank > 0` only LoRA
adapters train (`sora_jax.training.lora`): the state and its checkpoints hold adapters,
the frozen base is passed to every step.
"""
import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sora_jax import paths
from sora_jax.config_check import (BINDING_GRADS, COND_MASKS, ConfigError, eval_timesteps,
                                   init_from_dir, parse_weights)
from sora_jax.data import encode
from sora_jax.diffusion import loss as loss_lib
from sora_jax.diffusion import masks as masks_lib
from sora_jax.diffusion import schedules
from sora_jax.models import dit as dit_lib
from sora_jax.models import text_encoder as text_lib
from sora_jax.models import weights
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import checkpoint, lora, loop, optim

EVAL_NOISE_SEED = 1206  # Noise and text choice of the held-out evaluation (independent of `seed`).
TEXT_KEYS = {"caption": ("caption_emb", "caption_mask"), "prompt": ("prompt_emb", "prompt_mask")}


# What a train step reads of a batch (to_device moves nothing else to the devices).
_BATCH_KEYS = ("latent_mean", "latent_std", "caption_emb", "caption_mask", "prompt_emb",
               "prompt_mask")


def choose_text(rng, batch: dict, field: str):
  """(emb_BLD, mask_BL) from the caption, the prompt, or per sample one of them ('both')."""
  if field != "both":
    e, m = TEXT_KEYS[field]
    return batch[e].astype(jnp.float32), batch[m].astype(bool)
  return _caption_where(_pick_caption(rng, batch), batch)


def _pick_caption(rng, batch: dict):
  """(B,) bool: per sample, the caption (else the prompt) for caption_field 'both'."""
  return jax.random.bernoulli(rng, 0.5, (batch["caption_emb"].shape[0],))


def choose_negative(rng, batch: dict, field: str, use: str = "both"):
  """(emb_BLD, mask_BL, valid_B) of the binding negatives (encode.NEGATIVE_KEYS) of the text
  that choose_text(rng, batch, field) picks: the same field per sample. `use`
  (diffusion.binding_field) 'caption' or 'prompt': the other field's samples are not valid."""
  neg = {f: tuple(batch[k] for k in keys) for f, keys in encode.NEGATIVE_KEYS.items()}
  on = {f: use in ("both", f) for f in neg}
  if field != "both":
    e, m, v = neg[field]
    return e.astype(jnp.float32), m.astype(bool), v.astype(bool) & on[field]
  pick_B = _pick_caption(rng, batch)
  (ce, cm, cv), (pe, pm, pv) = neg["caption"], neg["prompt"]
  return (jnp.where(pick_B[:, None, None], ce, pe).astype(jnp.float32),
          jnp.where(pick_B[:, None], cm, pm).astype(bool),
          jnp.where(pick_B, cv.astype(bool) & on["caption"], pv.astype(bool) & on["prompt"]))


def batch_keys(cfg) -> tuple[str, ...]:
  """What a train step of `cfg` reads of a batch (to_device moves nothing else)."""
  keys = _BATCH_KEYS
  if cfg.diffusion.binding_weight > 0:
    keys += tuple(k for keys in encode.NEGATIVE_KEYS.values() for k in keys)
  if cfg.diffusion.motion_weight > 0:
    keys += ("motion_labels",)
  return keys


def motion_label_loss(logits_BFGHK, labels_BTHWC, cond_BT, patch_size, keep_B=None):
  """(cross-entropy, KL, accuracy) of diffusion.motion_weight: the motion head's per-token
  logits (B, F, GH, GW, K) against data.motion_labels (B, T, H, W, K + 1: per latent cell
  the pixel shares of each motion, then of the background), pooled over each token's patch.

  A token's target is the motions of its object pixels, normalised, and it weighs its
  object share (the background weighs nothing); only frames not given clean count
  (cond_BT per latent frame), of the samples keep_B (bool; None: all). The cross-entropy
  is the weighted mean over tokens; the KL is
  it less the targets' entropy (0 when the head is exact); accuracy: how often the
  head's top class is the target's, by the same weights. All 0 without an object pixel."""
  pt, ph, pw = patch_size
  b, f, gh, gw, k = logits_BFGHK.shape
  labels = labels_BTHWC.astype(jnp.float32).reshape(b, f, pt, gh, ph, gw, pw, k + 1)
  labels = labels.mean(axis=(2, 4, 6))
  share = 1.0 - labels[..., k]
  target = labels[..., :k] / jnp.maximum(share, 1e-6)[..., None]
  free_BF = (~cond_BT.reshape(b, f, pt)).all(axis=2).astype(jnp.float32)
  if keep_B is not None:
    free_BF = free_BF * keep_B.astype(jnp.float32)[:, None]
  w = share * free_BF[:, :, None, None]
  n = jnp.maximum(jnp.sum(w), 1e-6)
  logp = jax.nn.log_softmax(logits_BFGHK.astype(jnp.float32), axis=-1)
  ce = -jnp.sum(target * logp, axis=-1)
  ent = -jnp.sum(jnp.where(target > 0, target * jnp.log(jnp.maximum(target, 1e-30)), 0.0), -1)
  hit = (jnp.argmax(logits_BFGHK, -1) == jnp.argmax(target, -1)).astype(jnp.float32)
  mean = lambda x: jnp.sum(x * w) / n
  return mean(ce), mean(ce - ent), mean(hit)


def binding_hinge(err_pos_B, err_neg_B, valid_B, margin: float):
  """(loss, mean log-ratio): the mean over valid samples of relu(log(1 + margin) - g), with
  g = log(err_neg / err_pos) the log of how much worse the negative text predicts the clip,
  and g's mean (the training-time binding gap; 0 where no sample is valid)."""
  gap_B = jnp.log(err_neg_B + 1e-6) - jnp.log(err_pos_B + 1e-6)
  w_B = valid_B.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(w_B), 1.0)
  hinge_B = jax.nn.relu(jnp.log1p(margin) - gap_B)
  return jnp.sum(hinge_B * w_B) / n, jnp.sum(gap_B * w_B) / n


def binding_match(logit_pos_B, logit_neg_B, valid_B):
  """(loss, mean logit margin, accuracy) of diffusion.binding_loss='match': over valid
  samples, the mean logistic loss of the matching head, the text labelled 1 and the
  negative 0 (softplus(-pos) + softplus(neg)), the mean of pos - neg, and the share of
  samples with pos > neg (0 where no sample is valid)."""
  w_B = valid_B.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(w_B), 1.0)
  loss_B = jax.nn.softplus(-logit_pos_B) + jax.nn.softplus(logit_neg_B)
  margin_B = logit_pos_B - logit_neg_B
  return (jnp.sum(loss_B * w_B) / n, jnp.sum(margin_B * w_B) / n,
          jnp.sum((margin_B > 0) * w_B) / n)


def project_conflict(g_main, g_extra):
  """(g_main + g_extra', cosine of the two): g_extra' is g_extra less its component along
  g_main where the two point apart (dot < 0; PCGrad, Yu et al. 2020), else g_extra. Over
  the whole parameter tree, in float32."""
  dot = lambda a, b: sum(jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32))
                         for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  d, nm, ne = dot(g_main, g_extra), dot(g_main, g_main), dot(g_extra, g_extra)
  c = jnp.minimum(d, 0.0) / jnp.maximum(nm, 1e-30)
  out = jax.tree.map(lambda m, e: (m + e - c * m).astype(m.dtype), g_main, g_extra)
  return out, d / jnp.maximum(jnp.sqrt(nm * ne), 1e-30)


# diffusion.binding_grad: which parameters the contrast's gradient reaches (None: all).
_GRAD_GROUPS = dict(zip(BINDING_GRADS, (None, dit_lib.acts_on_text_only,
                                        dit_lib.acts_on_text_tokens,
                                        dit_lib.in_cross_attention)))


def _param_names(path) -> tuple[str, ...]:
  """A tree path's dict keys (flax boxes add attribute keys, which are skipped)."""
  return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def gradient_only_to(params, group: str):
  """`params` with stop_gradient on every leaf outside diffusion.binding_grad's `group`
  ('all': unchanged): a loss of the result sends gradient to that group only, with the
  same value."""
  keep = _GRAD_GROUPS[group]
  if keep is None:
    return params
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x if keep(_param_names(p)) else jax.lax.stop_gradient(x), params)


def choose_text_per_clip(keys_B, batch: dict, field: str):
  """choose_text with one key per clip: clip b's choice ('both') depends on keys_B[b] only."""
  if field != "both":
    return choose_text(None, batch, field)
  return _caption_where(jax.vmap(lambda k: jax.random.bernoulli(k, 0.5))(keys_B), batch)


def _caption_where(pick_B, batch: dict):
  """(emb_BLD, mask_BL): the caption where pick_B, else the prompt."""
  emb = jnp.where(pick_B[:, None, None], batch["caption_emb"], batch["prompt_emb"])
  mask = jnp.where(pick_B[:, None], batch["caption_mask"], batch["prompt_mask"])
  return emb.astype(jnp.float32), mask.astype(bool)


def make_fns(cfg, dit, tx, latent_stats, null_text, sample_shape, text_len):
  """Pure (init_state, train_step) for the DiT.

  sample_shape: (B, t, h, w, C) latent shape used only to initialise parameters.
  null_text: (emb_LD, mask_L) of the empty prompt, used for caption dropout.
  `base` (both functions): loaded DiT params or None. init_state(base) starts full
  training from them; with train.lora_rank > 0 the state's 'params'/'ema' are LoRA
  adapters and train_step(state, batch, base) trains them on the frozen base.
  """
  mu, sigma = (jnp.asarray(a) for a in latent_stats)
  probs = parse_weights(cfg.diffusion.cond_masks, COND_MASKS)
  null_emb, null_mask = (jnp.asarray(a) for a in null_text)
  use_lora = cfg.train.lora_rank > 0
  shapes = dit_lib.param_shapes(cfg)  # Boxed: logical names for adapters / loaded params.

  def init_state(base=None):
    rng = jax.random.PRNGKey(cfg.seed)
    rng, k = jax.random.split(rng)
    b = sample_shape[0]
    if use_lora:
      params = lora.init_adapters(k, shapes, cfg.train)
    elif base is not None:  # Boxed with the logical names, so the state shards like init's.
      params = jax.tree.map(lambda box, x: box.replace_boxed(x), shapes, base,
                            is_leaf=lambda x: isinstance(x, nn.Partitioned))
    else:
      params = dit.init(k, jnp.zeros(sample_shape), jnp.zeros(sample_shape[:2]),
                        jnp.zeros((b, text_len, cfg.text.dim)),
                        jnp.ones((b, text_len), bool))["params"]
    return {"params": params, "opt": tx.init(params), "ema": params,
            "step": jnp.zeros((), jnp.int32), "rng": rng}

  def train_step(state, batch, base=None):
    rng, k_lat, k_txt, k_drop, k_t, k_mask, k_eps = jax.random.split(state["rng"], 7)
    mean, std = batch["latent_mean"], batch["latent_std"]
    z = mean + std * jax.random.normal(k_lat, mean.shape)
    x0 = (z - mu) / sigma
    b, t = x0.shape[:2]
    emb, mask = choose_text(k_txt, batch, cfg.data.caption_field)
    keep_B = jax.random.uniform(k_drop, (b,)) >= cfg.diffusion.caption_dropout
    emb = jnp.where(keep_B[:, None, None], emb, null_emb[None])
    mask = jnp.where(keep_B[:, None], mask, null_mask[None])
    # The binding contrast and the motion labels run on video batches only (a single frame
    # shows no motion).
    contrast = cfg.diffusion.binding_weight > 0 and t > 1
    motion = cfg.diffusion.motion_weight > 0 and t > 1
    if contrast:
      neg_emb, neg_mask, neg_valid_B = choose_negative(
          k_txt, batch, cfg.data.caption_field, cfg.diffusion.binding_field)
    if not cfg.dit.text_mask:  # Attend to every text slot, padding (zeros) too, as Wan does.
      mask = jnp.ones_like(mask)
      if contrast:
        neg_mask = jnp.ones_like(neg_mask)
    tokens = schedules.num_tokens(x0.shape[1:4], cfg.dit.patch_size)
    t_B = schedules.sample_timesteps(k_t, b, tokens, cfg.diffusion)
    cond_BT = masks_lib.sample_cond_mask(k_mask, b, t, probs)
    eps = jax.random.normal(k_eps, x0.shape)
    # dit.dropout's key is folded in, not split above, so dropout 0 leaves every draw as it was.
    k_dropout = jax.random.fold_in(state["rng"], 1)

    def loss_fn(params):
      """((denoising loss, weighted contrast term or 0), aux)."""
      if use_lora:
        params = lora.merge(base, params, cfg.train)

      def model_fn_of(p, heads=None):
        """The DiT's prediction; with `heads` (a dict), the motion head's logits of the same
        forward pass are left in heads['motion'] as it traces."""
        def model_fn(x_t, t_BT, c):
          out = dit.apply({"params": p}, x_t, t_BT, c[0], c[1],
                          deterministic=not cfg.dit.dropout, rngs={"dropout": k_dropout},
                          return_motion=heads is not None)
          if heads is None:
            return out
          out, heads["motion"] = out
          return out
        return model_fn
      heads = {} if motion and not cfg.diffusion.motion_noise_pass else None
      loss, err_B = loss_lib.rf_loss(model_fn_of(params, heads), x0, t_B, eps, cond_BT,
                                     cfg.diffusion.prediction, cond=(emb, mask),
                                     t_clip=cfg.diffusion.x0_loss_t_clip)
      aux = {}
      if motion and cfg.diffusion.motion_noise_pass:
        # Half the batch again with frame 0 given and every other frame pure noise (t = 1):
        # only the text can say which of the objects in frame 0 makes which motion.
        # Samples whose caption was dropped are left out.
        r = max(1, b // 2)
        first_RT = jnp.zeros((r, t), bool).at[:, 0].set(True)
        x_t, t_RT = loss_lib.noised(x0[:r], jnp.ones((r,)), eps[:r], first_RT)
        logits = dit.apply({"params": params}, x_t, t_RT, emb[:r], mask[:r],
                           deterministic=not cfg.dit.dropout, rngs={"dropout": k_dropout},
                           return_motion=True)[-1]
        scored = (logits, batch["motion_labels"][:r], first_RT, keep_B[:r])
      elif motion:
        scored = (heads["motion"], batch["motion_labels"], cond_BT,
                  t_B >= cfg.diffusion.motion_t_min)
      if motion:
        logits, labels, given, keep = scored
        ce, kl, acc = motion_label_loss(logits, labels, given, cfg.dit.patch_size, keep)
        aux = {"motion_loss": ce, "motion_kl": kl, "motion_acc": acc}
        loss = loss + cfg.diffusion.motion_weight * ce
      if contrast:
        # The same clips, noise, t and clean frames with the negative text, on the half of
        # the batch where it applies (valid samples first; the rest weigh nothing).
        valid_B = neg_valid_B & keep_B & (t_B >= cfg.diffusion.binding_t_min)
        rows = jnp.argsort(~valid_B, stable=True)[:max(1, b // 2)]
        if cfg.diffusion.binding_loss == "match":
          # The matching head's logits of the text and of the negative on the same noised
          # clips; the prediction's errors stay out of it.
          x_t, t_BT = loss_lib.noised(x0[rows], t_B[rows], eps[rows], cond_BT[rows])
          logit = lambda e, m: dit.apply(
              {"params": params}, x_t, t_BT, e, m, deterministic=not cfg.dit.dropout,
              rngs={"dropout": k_dropout}, return_match=True)[1]
          match, gap, acc = binding_match(logit(emb[rows], mask[rows]),
                                          logit(neg_emb[rows], neg_mask[rows]), valid_B[rows])
          aux |= {"binding_loss": match, "binding_gap": gap, "binding_acc": acc,
                  "binding_frac": jnp.mean(valid_B[rows].astype(jnp.float32))}
          return (loss, cfg.diffusion.binding_weight * match), aux
        grad_to = cfg.diffusion.binding_grad
        hinge_fn = model_fn_of(gradient_only_to(params, grad_to))
        rows_err = lambda c: loss_lib.rf_loss(
            hinge_fn, x0[rows], t_B[rows], eps[rows], cond_BT[rows], cfg.diffusion.prediction,
            cond=c, t_clip=cfg.diffusion.x0_loss_t_clip)[1]
        err_neg = rows_err((neg_emb[rows], neg_mask[rows]))
        # Outside 'all', the text's own error on these rows is computed again through the
        # same restricted parameters: both sides of the hinge pull on that group alone.
        # (Its pull on the text's error matters: without it the group degrades every
        # text to push the negative's error up, and the run diverges: docs/results.md.)
        err_pos = err_B[rows] if grad_to == "all" else rows_err((emb[rows], mask[rows]))
        hinge, gap = binding_hinge(err_pos, err_neg, valid_B[rows],
                                   cfg.diffusion.binding_margin)
        aux |= {"binding_loss": hinge, "binding_gap": gap,
                "binding_frac": jnp.mean(valid_B[rows].astype(jnp.float32))}
        return (loss, cfg.diffusion.binding_weight * hinge), aux
      return (loss, jnp.zeros((), jnp.float32)), aux

    if contrast and cfg.diffusion.binding_project:
      # PCGrad: one forward pass, a backward pass per term; where the contrast's gradient
      # points against the denoising loss's, its component along that gradient is removed.
      (plain, extra), vjp_fn, aux = jax.vjp(loss_fn, state["params"], has_aux=True)
      g_plain, = vjp_fn((jnp.ones_like(plain), jnp.zeros_like(extra)))
      g_extra, = vjp_fn((jnp.zeros_like(plain), jnp.ones_like(extra)))
      grads, cos = project_conflict(g_plain, g_extra)
      loss, aux = plain + extra, {**aux, "binding_cos": cos}
    else:
      def total_fn(params):
        (plain, extra), aux = loss_fn(params)
        return plain + extra, aux
      (loss, aux), grads = jax.value_and_grad(total_fn, has_aux=True)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = {"params": params, "opt": opt, "step": state["step"] + 1, "rng": rng,
           "ema": optim.ema_update(state["ema"], params, cfg.train.ema_decay, state["step"])}
    grad_norm = optax.global_norm(grads)
    return new, {"loss": loss, "grad_norm": grad_norm,
                 "cond_frac": jnp.mean(cond_BT.astype(jnp.float32)),
                 "finite": optim.all_finite(loss, grad_norm), **aux}

  return init_state, train_step


def make_eval_loss(cfg, dit, latent_stats):
  """Pure `eval_loss(params, batch, key, base) -> (sums (len(train.eval_timesteps),), count)`.

  The velocity MSE |v_pred - v|^2 of `params` at each fixed t of train.eval_timesteps,
  every latent frame noised (no conditioning frames), on the posterior means (no latent
  sampling), no caption dropout, summed over the batch's valid clips (`batch['mask']`),
  and their count. Each clip's noise and caption/prompt choice come from `key` folded with
  its record number (`batch['index']`), so a clip scores the same in any batch size,
  process count or batch position. Whatever the recipe (prediction, x0_loss_t_clip,
  shift, t distribution), the figure is the same quantity, so runs on the same encoded
  data compare. `base`: the frozen DiT that LoRA adapters (`params`) are merged into;
  None otherwise.
  """
  mu, sigma = (jnp.asarray(a) for a in latent_stats)
  ts = jnp.asarray(eval_timesteps(cfg), jnp.float32)

  def eval_loss(params, batch, key, base=None):
    if cfg.train.lora_rank > 0:
      params = lora.merge(base, params, cfg.train)
    x0 = (batch["latent_mean"] - mu) / sigma
    b, t = x0.shape[:2]
    keys_B = jax.vmap(lambda i: jax.random.fold_in(key, i))(batch["index"])
    k_txt_B, k_eps_B = jnp.moveaxis(jax.vmap(jax.random.split)(keys_B), 1, 0)
    emb, mask = choose_text_per_clip(k_txt_B, batch, cfg.data.caption_field)
    if not cfg.dit.text_mask:
      mask = jnp.ones_like(mask)
    eps = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:]))(k_eps_B)
    free_BT = jnp.zeros((b, t), bool)
    valid_B = batch["mask"].astype(jnp.float32)

    def model_fn(x_t, t_BT, c):
      return dit.apply({"params": params}, x_t, t_BT, c[0], c[1])

    def at(t_value):
      # t >= the smallest eval t > 0, so a clip far below it makes x0's error exactly v's.
      _, per_clip_B = loss_lib.rf_loss(model_fn, x0, jnp.full((b,), t_value), eps, free_BT,
                                       cfg.diffusion.prediction, cond=(emb, mask), t_clip=1e-6)
      return jnp.sum(per_clip_B * valid_B)

    return jax.lax.map(at, ts), jnp.sum(valid_B)

  return eval_loss


def load_init_from(cfg, mesh, rules) -> dict:
  """train.init_from's newest DiT checkpoint (EMA weights), checked against dit.* and
  sharded over `mesh` by the logical rules."""
  directory = init_from_dir(cfg.train.init_from)
  params, step = checkpoint.load_params(directory, use_ema=True)
  boxed = dit_lib.param_shapes(cfg)
  want = nn.unbox(boxed)
  leaf_shapes = lambda tree: {jax.tree_util.keystr(p): tuple(np.shape(x))
                              for p, x in jax.tree_util.tree_leaves_with_path(tree)}
  if "text_refiner" in want and "text_refiner" not in params:
    # A text refiner added to a DiT trained without one (the same on every host: seeded);
    # with dit.text_refiner_gate_init = 0 the loaded model computes what it did before.
    params = {**params, "text_refiner": dit_lib.init_text_refiner(cfg, cfg.seed)}
    print(f"[train] train.init_from: dit.text_refiner_layers={cfg.dit.text_refiner_layers} "
          "is new: the refiner starts from its init (gates "
          f"{cfg.dit.text_refiner_gate_init:g})", flush=True)
  for name, init in (("match_head", dit_lib.init_match_head),
                     ("motion_head", dit_lib.init_motion_head)):
    if name in want and name not in params:
      # A head added to a DiT trained without one (seeded: the same on every host); it
      # only reads the hidden states, so the prediction is what it was.
      params = {**params, name: init(cfg, cfg.seed)}
      print(f"[train] train.init_from: dit.{name} is new: the head starts from its init",
            flush=True)
  got_paths, want_paths = leaf_shapes(params), leaf_shapes(want)
  if got_paths != want_paths:
    diff = sorted(set(got_paths.items()) ^ set(want_paths.items()))[:4]
    raise ConfigError(f"train.init_from={cfg.train.init_from!r} (step {step}) does not fit "
                      f"this config's DiT (first differences, name and shape: {diff}); set "
                      "dit.* to the shapes it was trained with (its config.py)")
  shardings = nn.unbox(mesh_lib.logical_sharding(boxed, mesh, rules))
  dtype = jnp.dtype(cfg.dit.param_dtype)
  print(f"[train] train.init_from: DiT EMA weights of step {step} in {directory}", flush=True)
  return jax.tree.map(
      lambda x, s: jax.make_array_from_callback(np.shape(x), s,
                                                lambda idx: np.asarray(x[idx], dtype)),
      params, shardings)


class Trainer:
  """Builds the mesh, sharded state and jitted step for a config (shared with benchmark/tests).

  With `config.weights` (or `base_params`, already sharded as this mesh's rules say) the DiT
  is fine-tuned from those parameters: fully, or through LoRA adapters when
  train.lora_rank > 0. The base is loaded on first use, so a resumed full fine-tune never
  reads it.
  """

  def __init__(self, cfg, latent_stats, null_text, sample_shape, text_len, mesh=None,
               base_params=None):
    self.cfg = cfg
    self.mesh = mesh or mesh_lib.make_mesh(cfg.mesh)
    self.rules = mesh_lib.rules(cfg)
    dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    if cfg.data.batch_size % dp:
      raise ConfigError(f"data.batch_size={cfg.data.batch_size} must divide over {dp} "
                        "data-parallel devices (mesh.data x mesh.fsdp)")
    self.dit = dit_lib.dit_from_config(cfg)
    self.tx = optim.make_optimizer(
        cfg.train.lr, cfg.train.warmup_steps, cfg.train.num_steps, cfg.train.min_lr_ratio,
        cfg.train.weight_decay, cfg.train.b1, cfg.train.b2, cfg.train.grad_clip)
    init_state, step = make_fns(cfg, self.dit, self.tx, latent_stats, null_text, sample_shape,
                                text_len)
    self.lora = cfg.train.lora_rank > 0
    self.from_base = bool(cfg.weights or cfg.train.init_from) or base_params is not None
    if self.lora and not self.from_base:
      raise ConfigError("train.lora_rank > 0 adapts a loaded model: set --config.weights=FOLDER "
                        "(docs/open_weights.md), or train.lora_rank=0 to train from scratch")
    self._base = base_params
    abstract_base = nn.unbox(dit_lib.param_shapes(cfg)) if self.from_base else None
    with self.context():
      boxed = jax.eval_shape(init_state, abstract_base)
      self.state_sharding = nn.unbox(mesh_lib.logical_sharding(boxed, self.mesh, self.rules))
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        nn.unbox(boxed), self.state_sharding)
    rep = mesh_lib.replicated(self.mesh)
    self._init = jax.jit(lambda base: nn.unbox(init_state(base)),
                         out_shardings=self.state_sharding)
    self._step = jax.jit(step, donate_argnums=0, out_shardings=(self.state_sharding, rep))
    self._eval_loss = jax.jit(make_eval_loss(cfg, self.dit, latent_stats), out_shardings=rep)

  def base_params(self):
    """The loaded DiT (config.weights or train.init_from), sharded by this mesh's rules; None
    without one."""
    if self._base is None and self.from_base:
      if self.cfg.train.init_from:
        self._base = load_init_from(self.cfg, self.mesh, self.rules)
      else:
        self._base = weights.load_dit(self.cfg, self.mesh, self.rules)
    return self._base

  def context(self):
    stack = contextlib.ExitStack()
    stack.enter_context(nn.logical_axis_rules(self.rules))
    stack.enter_context(jax.set_mesh(self.mesh))
    return stack

  def init_state(self):
    base = self.base_params()
    with self.context():
      state = self._init(base)
    if not self.lora:
      self._base = None  # A full fine-tune owns its copy in the state.
    return state

  def extra_step_args(self) -> tuple:
    """What the jitted step takes after (state, batch): the frozen base under LoRA."""
    return (self.base_params() if self.lora else None,)

  def step(self, state, batch):
    with self.context():
      return self._step(state, batch, *self.extra_step_args())

  def eval_losses(self, state, batches: list[dict]) -> np.ndarray:
    """(len(train.eval_timesteps),) mean velocity MSE of the EMA weights over the valid clips
    of `batches` (from eval_to_device); a clip's noise is the same in every call, every run
    and every batching."""
    key = jax.random.PRNGKey(EVAL_NOISE_SEED)
    with self.context():
      per_batch = jax.device_get([self._eval_loss(state["ema"], batch, key,
                                                  *self.extra_step_args())
                                  for batch in batches])
    count = sum(float(c) for _, c in per_batch)
    if not count:
      raise ValueError("no valid clip in the evaluation batches")
    return np.sum([np.asarray(s, np.float64) for s, _ in per_batch], axis=0) / count

  def compile_step(self, batch):
    """The train step lowered for the abstract state and `batch`, compiled (benchmarks).

    Call the result as `compiled(state, batch, *self.extra_step_args())`.
    """
    with self.context():
      return self._step.lower(self.abstract_state, batch, *self.extra_step_args()).compile()

  def to_device(self, batch_np: dict, keys=None) -> dict:
    keys = batch_keys(self.cfg) if keys is None else keys
    return mesh_lib.to_global({k: batch_np[k] for k in keys if k in batch_np}, self.mesh)

  def eval_to_device(self, batches_np: list[dict]) -> list[dict]:
    """Evaluation batches (encode.fixed_batches) on the mesh, with the record numbers and
    valid-row masks that eval_losses keys and weighs each clip by."""
    return [self.to_device(b, _BATCH_KEYS + ("index", "mask")) for b in batches_np]


def make_trainer(cfg, workdir: str, mesh=None) -> Trainer:
  """The Trainer for the encoded data set of `cfg` (data.data_dir, else WORKDIR/data) with
  WORKDIR's latent statistics, on `mesh` (default: config.mesh over all devices)."""
  info = encode.read_info(cfg, workdir)
  if cfg.diffusion.binding_weight > 0 and not info.get("binding_negatives"):
    raise ConfigError(
        f"diffusion.binding_weight={cfg.diffusion.binding_weight} trains against negative texts "
        "the encoded data set lacks; encode with --config.data.binding_negatives=True into a "
        "new data.data_dir, or set diffusion.binding_weight=0")
  if cfg.diffusion.motion_weight > 0 and not info.get("motion_labels"):
    raise ConfigError(
        f"diffusion.motion_weight={cfg.diffusion.motion_weight} trains against per-token motion "
        "labels the encoded data set lacks; encode with --config.data.motion_labels=True into "
        "a new data.data_dir, or set diffusion.motion_weight=0")
  want = text_lib.context_length(cfg)
  if info["text_len"] != want and not cfg.weights:
    raise ConfigError(
        f"the encoded data set has {info['text_len']} text slots per caption but text.max_length "
        f"+ text.clause_tokens = {want}; set them as when it was encoded, or re-encode "
        f"(--mode=encode into a new data.data_dir)")
  return Trainer(cfg, weights.latent_stats(cfg, workdir), encode.null_text(cfg, workdir),
                 (cfg.data.batch_size, *info["latent_shapes"][0], info["z_dim"]),
                 info["text_len"], mesh=mesh)


def run(cfg, workdir: str) -> None:
  data_iter = encode.make_latent_iterator(cfg, workdir, split="train")
  trainer = make_trainer(cfg, workdir)
  loop.train_loop(workdir=workdir, ckpt_dir=paths.dit_checkpoints(workdir), train_cfg=cfg.train,
                  init_state=trainer.init_state, abstract_state=trainer.abstract_state,
                  step_fn=trainer.step, data_iter=data_iter, to_device=trainer.to_device,
                  tag="train", eval_fn=make_evaluator(cfg, workdir, trainer))


def make_evaluator(cfg, workdir: str, trainer: "Trainer"):
  """eval_fn(state, step) -> {eval_loss, eval_loss_t<t>..., eval_loss_train}: the held-out
  velocity MSE (Trainer.eval_losses) on train.eval_clips fixed validation clips, per t
  and averaged, and its average on as many fixed training clips (the train/held-out
  gap says whether the model memorises its clips)."""
  ts = eval_timesteps(cfg)
  splits = {}
  for split in ("validation", "train"):
    batches = encode.fixed_batches(cfg, workdir, split, cfg.train.eval_clips)
    splits[split] = trainer.eval_to_device(batches)
  if not splits["validation"]:
    raise ConfigError("the encoded data set has no validation clip; build it with "
                      "data.num_val >= 1")

  def eval_fn(state, step):
    del step
    val = trainer.eval_losses(state, splits["validation"])
    out = {"eval_loss": float(np.mean(val))}
    out.update({f"eval_loss_t{t:g}": float(v) for t, v in zip(ts, val)})
    out["eval_loss_train"] = float(np.mean(trainer.eval_losses(state, splits["train"])))
    return out

  return eval_fn
