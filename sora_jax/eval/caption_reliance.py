"""How much a DiT relies on its caption, per noise level (a training diagnostic).

For validation clips of the encoded data set, at each noise level t the DiT's x0 error
is measured three times on the same noisy latents: with each clip's own prompt, with
another clip's prompt (the batch rolled by one), and with the null (empty) prompt. The
ratio shuffled / right is above 1 exactly as far as the network uses the words; a model
that ignores its caption scores 1.0 at every t however low its loss.

This is what showed why an earlier shipped model followed no prompt: trained with
diffusion.shift = 1, its ratio was 1.005-1.03 at every t after 6,000 steps, whereas
shift 3 gave 1.11-1.36 after 1,500 (docs/results.md, "DiT: what moves prompt adherence").

  python scripts/caption_reliance.py --config=configs/shapes_tiny.py --workdir=W
"""
import json

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax import paths
from sora_jax.data import encode
from sora_jax.data import shapes_world
from sora_jax.data import tfds_shapes
from sora_jax.diffusion import rectified_flow as rf
from sora_jax.models import dit as dit_lib
from sora_jax.models import text_encoder as text_lib
from sora_jax.models import weights
from sora_jax.training import checkpoint

DEFAULT_TS = (0.3, 0.6, 0.8, 0.9, 0.95, 0.99, 1.0)


def validation_batch(cfg, workdir: str, num_clips: int, field: str = "prompt") -> dict:
  """Normalised latent means and `field` embeddings of the first `num_clips` video clips
  (more than one latent frame) of the encoded validation split."""
  source, _ = encode.data_source(cfg, workdir, "validation")
  recs = []
  for i in range(len(source)):
    r = source[i]
    if r["latent_mean"].shape[0] > 1:
      recs.append(r)
    if len(recs) == num_clips:
      break
  if len(recs) < 2:
    raise ValueError(f"the encoded validation split of {workdir} has {len(recs)} video clips; "
                     "caption reliance needs at least 2 (to give each another's caption)")
  mu, sigma = weights.load_latent_stats(workdir)
  return {"x0": (np.stack([r["latent_mean"] for r in recs]) - mu) / sigma,
          "emb": np.stack([r[f"{field}_emb"] for r in recs]).astype(np.float32),
          "mask": np.stack([r[f"{field}_mask"] for r in recs]).astype(bool),
          "null": encode.null_text(cfg, workdir)}


def x0_predictor(cfg):
  """jit fn(params, x_t, t_B, text, mask) -> the DiT's x0 estimate (its output converted
  by `rf.to_x0` for the config's `diffusion.prediction`: the output itself for 'x0')."""
  dit = dit_lib.dit_from_config(cfg)
  prediction = cfg.diffusion.prediction

  @jax.jit
  def fn(p, x, t, e, m):  # t: (B,) or (B, T) per latent frame (0: a frame given clean)
    out = dit.apply({"params": p}, x, t, e, m)
    t_BT = t if t.ndim == 2 else jnp.broadcast_to(t[:, None], x.shape[:2])
    return rf.to_x0(out, x, t_BT, prediction)

  return fn


def measure(cfg, params, batch: dict, ts=DEFAULT_TS, seed: int = 0) -> dict:
  """{str(t): {'right', 'shuffled', 'null': x0 MSE, 'ratio': shuffled / right}}."""
  fn = x0_predictor(cfg)
  x0, emb, mask = batch["x0"], batch["emb"], batch["mask"]
  n = len(x0)
  eps = np.random.default_rng(seed).standard_normal(x0.shape).astype(np.float32)
  roll = np.roll(np.arange(n), 1)
  null_e = np.broadcast_to(batch["null"][0], emb.shape)
  null_m = np.broadcast_to(batch["null"][1], mask.shape)
  out = {}
  for t in ts:
    x_t = jnp.asarray((1 - t) * x0 + t * eps)
    t_B = jnp.full((n,), t, jnp.float32)
    err = {name: float(np.mean(np.square(np.asarray(fn(params, x_t, t_B, e, m)) - x0)))
           for name, e, m in (("right", emb, mask), ("shuffled", emb[roll], mask[roll]),
                              ("null", null_e, null_m))}
    err["ratio"] = err["shuffled"] / max(err["right"], 1e-12)
    out[str(t)] = err
  return out


def for_workdir(cfg, workdir: str, data_workdir: str | None = None, num_clips: int = 48,
                ts=DEFAULT_TS, use_ema: bool = True, step: int | None = None) -> dict:
  """Caption reliance of WORKDIR's DiT (newest or `step` checkpoint) on the encoded
  validation clips of `data_workdir` (default: the same workdir)."""
  params, got = checkpoint.load_params(paths.dit_checkpoints(workdir), use_ema, step=step)
  batch = validation_batch(cfg, data_workdir or workdir, num_clips)
  return {"step": int(got), "num_clips": len(batch["x0"]), "by_t": measure(cfg, params, batch, ts)}


# Binding: does the DiT tie each word to its object? ----------------------------------

BINDING_TS = (0.5, 0.7, 0.8, 0.9, 0.95)
# Rows that score another row's prompt on a subset of its clips: 'motion_moving' is the
# 'motion' row where both objects move (no still object's position words change hands):
# the pure exchange of motion phrases that data.binding_swap='motion' trains against.
SUBSET_ROWS = {"motion_moving": "motion"}


def binding_batch(cfg, workdir: str, num_clips: int, text=None, split: str = "validation") -> dict:
  """The first `num_clips` two-object video clips of the encoded `split` ('train': clips the
  DiT trained on, to tell a learned binding from a memorised one) and the texts the
  binding probe conditions them on, encoded by the config's text encoder (or `text`):
  from `shapes_world.bound_prompts`, 'right' (the clip's prompt), one prompt per attribute
  of BINDING_ATTRIBUTES with that attribute bound to the other object (the right prompt
  where both objects share it), 'motion_other' and 'order'; 'caption' (the clip's caption)
  and 'caption_objects' (the same, objects' names exchanged: swap_caption_objects).

  Returns {'x0': normalised latent means, 'texts', 'emb', 'mask': {name: per clip},
  'valid': {attr: bool per clip, the objects differ in attr; and each SUBSET_ROWS row},
  'shuffled': the clip whose right prompt serves as each clip's other-clip prompt}."""
  source, _ = encode.data_source(cfg, workdir, split)
  recs, specs = [], []
  for i in range(len(source)):
    r = source[i]
    spec = json.loads(tfds_shapes.as_str(r["spec"]))
    if r["latent_mean"].shape[0] > 1 and len(spec["objects"]) == 2:
      recs.append(r)
      specs.append((i, spec))
    if len(recs) == num_clips:
      break
  if len(recs) < 2:
    raise ValueError(f"the encoded {split} split of {workdir} has {len(recs)} two-object "
                     "video clips; the binding measure needs at least 2 (raise data.num_val, or "
                     "data.num_train for the train split)")
  prompts = ("right", "motion_other", "order") + shapes_world.BINDING_ATTRIBUTES
  names = prompts + ("caption", "caption_objects")
  texts = {k: [] for k in names}
  valid = {k: [] for k in shapes_world.BINDING_ATTRIBUTES + tuple(SUBSET_ROWS)}
  for (i, spec), r in zip(specs, recs):
    bound = shapes_world.bound_prompts(spec, seed=i)
    for k in prompts:
      texts[k].append(bound.get(k, bound["right"])[0])
    for k in shapes_world.BINDING_ATTRIBUTES:
      valid[k].append(k in bound)
    valid["motion_moving"].append("motion" in bound and all(o["motion"] != "still"
                                                            for o in spec["objects"]))
    caption = tfds_shapes.as_str(r["caption"])
    texts["caption"].append(caption)
    texts["caption_objects"].append(shapes_world.swap_caption_objects(caption, spec))
  text = text or text_lib.load_text_encoder(cfg)
  emb, mask = {}, {}
  for k in names:
    e, m = text(texts[k])
    emb[k], mask[k] = np.asarray(e, np.float32), np.asarray(m, bool)
  mu, sigma = weights.load_latent_stats(workdir)
  out = {"x0": (np.stack([r["latent_mean"] for r in recs]) - mu) / sigma, "texts": texts,
         "emb": emb, "mask": mask, "valid": {k: np.asarray(v) for k, v in valid.items()},
         "shuffled": np.roll(np.arange(len(recs)), 1)}
  if "motion_labels" in recs[0]:  # data.motion_labels: what measure_motion_head scores
    out["motion_labels"] = np.stack([r["motion_labels"] for r in recs]).astype(np.float32)
  return out


def measure_binding(cfg, params, batch: dict, ts=BINDING_TS, noise_draws: int = 2,
                    seed: int = 0, cond_frames: int = 0) -> dict:
  """{str(t): {name: {'ratio', 'se', 'clips'}}}: per noise level, the x0 error with a
  prompt whose `name` attribute is bound to the other object (or another clip's prompt,
  'shuffled'; 'motion_other': both motions replaced by others, whether motion words are
  used at all; 'order': the objects named in the other order, whether mention order is
  read as drawing order; 'motion_moving': the motion row where both objects move) over
  the error with the right prompt ('caption_objects': over the error with the clip's own
  caption), on the clips where they differ, the same noisy latents for both (`noise_draws`
  draws a clip). 1.0: the DiT does not tell which object the words belong to; 'se' is the
  standard error of the ratio over clips.

  `cond_frames` = k > 0 gives the first k latent frames clean (t = 0), as image-to-video
  trains them (diffusion.cond_masks), and scores the other frames: there both objects are
  in plain view while their motions are not, so a DiT that binds has the most to gain."""
  fn = x0_predictor(cfg)
  x0 = batch["x0"]
  n, frames = len(x0), x0.shape[1]
  if not 0 <= cond_frames < frames:
    raise ValueError(f"cond_frames={cond_frames}: give 0 (text-to-video) up to {frames - 1} "
                     f"(the clips have {frames} latent frames)")
  clean_1T = np.arange(frames)[None, :] < cond_frames
  rng = np.random.default_rng(seed)
  eps = [rng.standard_normal(x0.shape).astype(np.float32) for _ in range(noise_draws)]
  conds = {k: (batch["emb"][k], batch["mask"][k]) for k in batch["emb"]}
  sh = batch["shuffled"]
  conds["shuffled"] = (batch["emb"]["right"][sh], batch["mask"]["right"][sh])
  everywhere = np.ones(n, bool)
  valid = dict(batch["valid"], shuffled=everywhere)
  for k in ("motion_other", "order"):
    if k in conds:
      valid[k] = everywhere
  baseline = {k: "right" for k in valid}
  if "caption_objects" in conds:
    valid["caption_objects"], baseline["caption_objects"] = everywhere, "caption"
  out = {}
  for t in ts:
    t_BT = jnp.asarray(np.where(clean_1T, 0.0, np.full((n, frames), t, np.float32)))
    err = {k: 0.0 for k in conds}
    for e_ in eps:
      x_t = np.where(clean_1T[..., None, None, None], x0, (1 - t) * x0 + t * e_)
      x_t = jnp.asarray(x_t)
      for k, (e, m) in conds.items():
        pred = np.asarray(fn(params, x_t, t_BT, e, m))
        sq = np.square(pred - x0)[:, cond_frames:]
        err[k] = err[k] + sq.reshape(n, -1).mean(1) / noise_draws
    row = {}
    for k, v in valid.items():
      if v.sum() < 2:
        continue
      right, other = err[baseline[k]][v], err[SUBSET_ROWS.get(k, k)][v]
      ratio = float(other.mean() / max(right.mean(), 1e-12))
      se = float(np.std(other - right, ddof=1) / np.sqrt(v.sum()) / max(right.mean(), 1e-12))
      row[k] = {"ratio": ratio, "se": se, "clips": int(v.sum())}
    row["right_mse"] = float(err["right"].mean())
    out[str(t)] = row
  return out


def measure_motion_head(cfg, params, batch: dict, ts=BINDING_TS, noise_draws: int = 2,
                        seed: int = 0, cond_frames: int = 0) -> dict:
  """{str(t): {'right', 'motion': accuracy, 'clips'}}: on the two-object clips whose
  objects both move ('motion_moving'), how often the motion head (dit.motion_head) names
  the true motion of each token's object (train.motion_label_loss's accuracy: tokens
  weighted by object share, frames past `cond_frames` only), conditioned on the right
  prompt and on the prompt with the two motions exchanged, the same noisy latents for
  both (as measure_binding draws them). A head that reads from the text which object makes
  which motion loses accuracy with the exchanged prompt; one that does not bind scores
  both alike. Needs the batch's 'motion_labels' (data.motion_labels)."""
  from sora_jax.training import train  # pylint: disable=g-import-not-at-top
  if "motion_labels" not in batch:
    raise ValueError("the motion head's binding needs clips encoded with data.motion_labels")
  dit = dit_lib.dit_from_config(cfg)
  patch = tuple(cfg.dit.patch_size)
  x0 = batch["x0"]
  n, frames = len(x0), x0.shape[1]
  clean_1T = np.arange(frames)[None, :] < cond_frames

  @jax.jit
  def accuracy(p, x, t, e, m, labels, cond):
    logits = dit.apply({"params": p}, x, t, e, m, return_motion=True)[1]
    return jax.vmap(lambda lg, lb, c: train.motion_label_loss(
        lg[None], lb[None], c[None], patch)[2])(logits, labels, cond)

  rng = np.random.default_rng(seed)
  eps = [rng.standard_normal(x0.shape).astype(np.float32) for _ in range(noise_draws)]
  v = batch["valid"]["motion_moving"]
  cond = jnp.asarray(np.broadcast_to(clean_1T, (n, frames)))
  out = {}
  for t in ts:
    t_BT = jnp.asarray(np.where(clean_1T, 0.0, np.full((n, frames), t, np.float32)))
    acc = {"right": 0.0, "motion": 0.0}
    for e_ in eps:
      x_t = jnp.asarray(np.where(clean_1T[..., None, None, None], x0, (1 - t) * x0 + t * e_))
      for k in acc:
        acc[k] = acc[k] + np.asarray(accuracy(params, x_t, t_BT, batch["emb"][k],
                                              batch["mask"][k], batch["motion_labels"],
                                              cond)) / noise_draws
    out[str(t)] = {k: float(a[v].mean()) for k, a in acc.items()} | {"clips": int(v.sum())}
  return out


def binding_for_workdir(cfg, workdir: str, data_workdir: str | None = None,
                        num_clips: int = 64, ts=BINDING_TS, use_ema: bool = True,
                        step: int | None = None, batch: dict | None = None,
                        cond_frames: int = 0) -> dict:
  """Binding of WORKDIR's DiT (newest or `step` checkpoint) on the two-object validation
  clips of `data_workdir` (default: the same workdir); pass `batch` to reuse one."""
  params, got = checkpoint.load_params(paths.dit_checkpoints(workdir), use_ema, step=step)
  batch = batch or binding_batch(cfg, data_workdir or workdir, num_clips)
  out = {"step": int(got), "num_clips": len(batch["x0"]), "cond_frames": int(cond_frames),
         "by_t": measure_binding(cfg, params, batch, ts, cond_frames=cond_frames)}
  if cfg.dit.motion_head and "motion_labels" in batch:
    out["motion_head"] = measure_motion_head(cfg, params, batch, ts, cond_frames=cond_frames)
  return out


def text_state_binding(text, num_prompts: int = 200) -> dict:
  """Do the frozen text states carry each object's motion in its own words? Over
  `num_prompts` two-object prompts (bound_prompts of ShapesWorld training specs), 1 - cos
  between the state of the first object's colour word with the right prompt and with the
  motions swapped ('motion_swapped'), against the same between the states of that colour
  word in two unrelated prompts ('unrelated', the scale of context)."""
  colours = set(shapes_world.COLORS)
  prompts = {"right": [], "motion": []}
  for seed in range(100 * num_prompts):
    spec = shapes_world.generate_clip(seed, 17, 32, 32)["spec"]
    if len(spec["objects"]) != 2:
      continue
    bound = shapes_world.bound_prompts(spec, seed)
    if "motion" in bound:
      prompts["right"].append(bound["right"][0])
      prompts["motion"].append(bound["motion"][0])
    if len(prompts["right"]) == num_prompts:
      break
  ids, _ = text.tokenize(prompts["right"])
  states = {k: np.asarray(text(v)[0], np.float32) for k, v in prompts.items()}

  def colour_slot(i):
    word = next(w for w in prompts["right"][i].replace(",", " ").split() if w in colours)
    first_piece = text.tokenize([word])[0][0][1]  # after [CLS]
    return word, int(np.flatnonzero(ids[i] == first_piece)[0])

  def distance(a, b):
    return 1.0 - float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

  slots = [colour_slot(i) for i in range(len(ids))]
  swapped = [distance(states["right"][i, p], states["motion"][i, p]) for i, (_, p) in enumerate(slots)]
  unrelated = [distance(states["right"][i, p], states["right"][j, q])
               for i, (w, p) in enumerate(slots) for j, (v, q) in enumerate(slots)
               if i < j and w == v]
  return {"prompts": len(ids), "motion_swapped": float(np.mean(swapped)),
          "unrelated": float(np.mean(unrelated)), "unrelated_pairs": len(unrelated)}
