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
import jax
import jax.numpy as jnp
import numpy as np

from sora_jax import paths
from sora_jax.data import encode
from sora_jax.models import dit as dit_lib
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


def measure(cfg, params, batch: dict, ts=DEFAULT_TS, seed: int = 0) -> dict:
  """{str(t): {'right', 'shuffled', 'null': x0 MSE, 'ratio': shuffled / right}}."""
  dit = dit_lib.dit_from_config(cfg)
  fn = jax.jit(lambda p, x, t, e, m: dit.apply({"params": p}, x, t, e, m))
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
