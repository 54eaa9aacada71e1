"""`--mode=train_vae`: trains the causal video VAE on the config's data set.

Loss = l1·|x̂−x| + l2·(x̂−x)² + kl·KL, plus (after `vae_train.disc_start`) a hinge 3D
patch-discriminator term. Images (T = 1 buckets) and videos train jointly: the data
pipeline draws each batch from one bucket. Checkpoints live in WORKDIR/vae_checkpoints;
every checkpoint also measures validation PSNR/SSIM of the EMA weights.
"""
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sora_jax import paths
from sora_jax.config_check import parse_buckets
from sora_jax.data import build, pipeline
from sora_jax.eval import image_metrics
from sora_jax.models import discriminator as disc_lib
from sora_jax.models import vae as vae_lib
from sora_jax.models import weights
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.training import checkpoint, loop, optim


def _kl(mean, logvar):
  return 0.5 * jnp.mean(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar)


def random_window(x, key, max_frames: int, crop_size: int, spatial_factor: int):
  """A random training window of a (B, T, H, W, C) batch: `max_frames` frames (a 1+4k run,
  0 = all) and a `crop_size` square (0 = whole frames), one offset for the whole batch,
  spatial offsets on the VAE's `spatial_factor` grid."""
  k_y, k_x = jax.random.split(jax.random.fold_in(key, 1))  # `key` itself picks the start frame
  if 0 < max_frames < x.shape[1]:
    # Causal convolutions make a short window's gradients those of the same frames in a
    # long clip (given the past), at a fraction of the cost.
    start = jax.random.randint(key, (), 0, x.shape[1] - max_frames + 1)
    x = jax.lax.dynamic_slice_in_dim(x, start, max_frames, axis=1)
  h, w = x.shape[2:4]
  ch, cw = min(crop_size or h, h), min(crop_size or w, w)
  if (ch, cw) != (h, w):
    # The VAE is fully convolutional: a crop gives more, cheaper steps for the same pixels.
    top = jax.random.randint(k_y, (), 0, (h - ch) // spatial_factor + 1) * spatial_factor
    left = jax.random.randint(k_x, (), 0, (w - cw) // spatial_factor + 1) * spatial_factor
    x = jax.lax.dynamic_slice(x, (0, 0, top, left, 0), (*x.shape[:2], ch, cw, x.shape[4]))
  return x


def training_forward(vae, params, x_BTHWC, key):
  """(recon_BTHWC, mean, logvar) of the training pass: `key` draws the posterior sample and,
  folded, the vae.dropout masks."""
  return vae.apply({"params": params}, x_BTHWC, key, rngs={"dropout": jax.random.fold_in(key, 1)})


def make_state_fns(cfg, vae, disc, tx, dtx, sample_shape, init_params=None):
  """(init_state, train_step) for the VAE, pure functions of explicit pytrees.

  init_params: start from these VAE parameters (e.g. open weights) instead of a fresh init.
  """
  vt = cfg.vae_train
  use_disc = vt.disc_start >= 0

  def init_state():
    rng = jax.random.PRNGKey(cfg.seed)
    rng, k_vae, k_disc = jax.random.split(rng, 3)
    x = jnp.zeros(sample_shape, jnp.float32)
    if init_params is not None:
      params = init_params
    else:
      params = nn.unbox(vae_lib.init_variables(vae, k_vae))["params"]  # rbg init: fast compile
    state = {"params": params, "opt": tx.init(params), "ema": params,
             "step": jnp.zeros((), jnp.int32), "rng": rng}
    if use_disc:
      dparams = disc.init(k_disc, x)["params"]
      state.update(disc=dparams, disc_opt=dtx.init(dparams))
    return state

  def train_step(state, batch):
    x = batch["video"].astype(jnp.float32) / 127.5 - 1.0
    rng, k, k_crop = jax.random.split(state["rng"], 3)
    x = random_window(x, k_crop, vt.max_frames, vt.crop_size, vae.spatial_factor)
    disc_on = (state["step"] >= vt.disc_start).astype(jnp.float32) if use_disc else 0.0

    def loss_fn(params):
      recon, mean, logvar = training_forward(vae, params, x, k)
      l1 = jnp.mean(jnp.abs(recon - x))
      l2 = jnp.mean((recon - x) ** 2)
      kl = _kl(mean, logvar)
      loss = vt.l1_weight * l1 + vt.l2_weight * l2 + vt.kl_weight * kl
      aux = {"l1": l1, "l2": l2, "kl": kl}
      if use_disc:
        g = disc_lib.generator_loss(disc.apply({"params": state["disc"]}, recon))
        loss = loss + disc_on * vt.disc_weight * g
        aux["g_loss"] = g
      return loss, (aux, recon)

    (loss, (aux, recon)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = dict(state, params=params, opt=opt, rng=rng, step=state["step"] + 1,
               ema=optim.ema_update(state["ema"], params, vt.ema_decay, state["step"]))
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
    if use_disc:
      fake = jax.lax.stop_gradient(recon)

      def d_loss_fn(dp):
        return disc_lib.hinge_d_loss(disc.apply({"params": dp}, x), disc.apply({"params": dp}, fake))

      d_loss, d_grads = jax.value_and_grad(d_loss_fn)(state["disc"])
      d_grads = jax.tree.map(lambda g: g * disc_on, d_grads)
      d_updates, d_opt = dtx.update(d_grads, state["disc_opt"], state["disc"])
      new.update(disc=optax.apply_updates(state["disc"], d_updates), disc_opt=d_opt)
      metrics["d_loss"] = d_loss
    metrics["finite"] = optim.all_finite(*metrics.values())
    return new, metrics

  return init_state, train_step


def make_reconstruct(vae):
  """jit((params, video) -> decode(posterior mean)): build once, reuse at every validation."""
  @jax.jit
  def recon(p, x):
    mean, _ = vae.apply({"params": p}, x, method=vae.encode)
    return vae.apply({"params": p}, mean, method=vae.decode)
  return recon


def reconstruction_metrics(vae, params, videos_uint8: list[np.ndarray], recon=None) -> dict:
  """Mean PSNR/SSIM of VAE reconstructions (posterior mean) of uint8 THWC clips; `recon`
  (from make_reconstruct) saves re-tracing when called repeatedly."""
  recon = recon or make_reconstruct(vae)
  psnrs, ssims = [], []
  for v in videos_uint8:
    x = image_metrics.to_unit(v)[None]
    out = image_metrics.to_uint8(np.asarray(recon(params, x))[0])
    psnrs.append(image_metrics.psnr(out, v))
    ssims.append(image_metrics.ssim(out, v))
  return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims))}


def run(cfg, workdir: str) -> None:
  vt = cfg.vae_train
  mesh = mesh_lib.make_mesh(cfg.mesh)
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  if vt.batch_size % dp:
    raise ValueError(f"vae_train.batch_size={vt.batch_size} must divide over {dp} data-parallel "
                     "devices (mesh.data x mesh.fsdp)")
  vae = vae_lib.vae_from_config(cfg)
  disc = disc_lib.PatchDiscriminator3D()
  tx = optim.make_optimizer(vt.lr, vt.warmup_steps, cfg.train.num_steps, 0.1, vt.weight_decay,
                            0.9, 0.99, vt.grad_clip)
  dtx = optim.make_optimizer(vt.lr, vt.warmup_steps, cfg.train.num_steps, 0.1, 0.0, 0.5, 0.9,
                             vt.grad_clip)
  t, h, w = parse_buckets(cfg.data.buckets)[0]
  # With open weights (`config.weights`) training fine-tunes their VAE; a resumed run
  # restores its checkpoint instead, so the weights are read only on the first start.
  fresh = not checkpoint.all_steps(paths.vae_checkpoints(workdir))
  init_params = weights.load_vae(cfg) if cfg.weights and fresh else None
  init_state, train_step = make_state_fns(cfg, vae, disc, tx, dtx, (1, t, h, w, 3), init_params)

  # The VAE is small: parameters replicated, batch split over data (+fsdp) devices.
  rep = mesh_lib.replicated(mesh)
  abstract = jax.eval_shape(init_state)
  state_sharding = jax.tree.map(lambda _: rep, abstract)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, state_sharding)
  init_jit = jax.jit(init_state, out_shardings=state_sharding)
  step_jit = jax.jit(train_step, donate_argnums=0, out_shardings=(state_sharding, rep))

  data_iter = pipeline.make_iterator(cfg, paths.data_dir(cfg, workdir), split="train",
                                     batch_size=vt.batch_size)
  val = [x["video"] for x in build.validation_examples(cfg, workdir, min(16, cfg.eval.num_vae_clips))]
  recon = make_reconstruct(vae)
  t0 = time.time()

  def eval_fn(state, step):
    m = reconstruction_metrics(vae, jax.device_get(state["ema"]), val, recon)
    return {"val_psnr": m["psnr"], "val_ssim": m["ssim"], "wall_s": time.time() - t0}

  loop.train_loop(workdir=workdir, ckpt_dir=paths.vae_checkpoints(workdir), train_cfg=cfg.train,
                  init_state=init_jit, abstract_state=abstract, step_fn=step_jit,
                  data_iter=data_iter, to_device=functools.partial(mesh_lib.to_global, mesh=mesh),
                  tag="train_vae", eval_fn=eval_fn)


def load_vae(cfg, workdir: str, use_ema: bool = True):
  """(vae module, params): the newest checkpoint in WORKDIR/vae_checkpoints, else (with
  `config.weights` set and no checkpoint) the open weights' VAE."""
  if cfg.weights and not checkpoint.all_steps(paths.vae_checkpoints(workdir)):
    return vae_lib.vae_from_config(cfg), weights.load_vae(cfg)
  params, _ = checkpoint.load_params(paths.vae_checkpoints(workdir), use_ema, written_by="train_vae")
  return vae_lib.vae_from_config(cfg), params
