"""LoRA fine-tuning of open weights: a no-op at init, trains only adapters, checkpoints only
adapters, clear errors (sampling and export with adapters: tests/test_lora_export.py).

Base model: the tiny random Wan 2.1 folder of tests/wan_tiny.py.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import wan_tiny  # noqa: E402  (tests/ is on sys.path)
from sora_jax import config_check, paths  # noqa: E402
from sora_jax.config_check import ConfigError  # noqa: E402
from sora_jax.models import dit as dit_lib  # noqa: E402
from sora_jax.models import weights  # noqa: E402
from sora_jax.parallel import mesh as mesh_lib  # noqa: E402
from sora_jax.training import checkpoint, lora, loop, train  # noqa: E402
from sora_jax.training.checkpoint import Checkpointer  # noqa: E402

LATENT = (2, 2, 4, 4, 16)  # (B, t, h, w, C): 5 frames of 32 x 32 through the tiny VAE.


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("wan") / "Wan2.1-T2V-tiny-Diffusers")
  wan_tiny.build(path)
  return path


def lora_config(root, rank=4, targets="q,k,v,o,ffn"):
  cfg = wan_tiny.tiny_config(root, "lora")
  cfg.train.lora_rank, cfg.train.lora_alpha, cfg.train.lora_targets = rank, 8.0, targets
  cfg.train.warmup_steps, cfg.train.log_every, cfg.train.checkpoint_every = 1, 1, 2
  cfg.train.tensorboard = False
  return cfg


def inputs(seed=0):
  r = np.random.default_rng(seed)
  return (r.standard_normal(LATENT).astype(np.float32),
          r.uniform(size=LATENT[:2]).astype(np.float32),
          r.standard_normal((LATENT[0], wan_tiny.TEXT_LEN, 32)).astype(np.float32))


def test_zero_b_adapters_are_an_exact_no_op(root):
  cfg = lora_config(root)
  base = weights.load_dit(cfg)
  adapters = nn.unbox(lora.init_adapters(jax.random.key(1), dit_lib.param_shapes(cfg), cfg.train))
  merged = lora.merge(base, adapters, cfg.train)
  jax.tree.map(np.testing.assert_array_equal, merged, base)
  apply = jax.jit(dit_lib.dit_from_config(cfg).apply)
  x, t, text = inputs()
  np.testing.assert_array_equal(apply({"params": merged}, x, t, text),
                                apply({"params": base}, x, t, text))
  # 2 layers x (q, k, v, o of self- and cross-attention + fc1, fc2), stacked under scan.
  assert len(lora.targeted_kernels(base, cfg.train)) == 10
  q = adapters["blocks"]["attn1"]["to_q"]
  assert q["lora_a"].shape == (2, 24, 4) and q["lora_b"].shape == (2, 4, 24)
  # A nonzero B adds exactly (alpha / r) A @ B to the kernel, and nothing else.
  adapters["blocks"]["attn1"]["to_q"]["lora_b"] = jnp.ones((2, 4, 24))
  merged = lora.merge(base, adapters, cfg.train)
  want = base["blocks"]["attn1"]["to_q"]["kernel"] + 2.0 * q["lora_a"] @ jnp.ones((2, 4, 24))
  np.testing.assert_allclose(merged["blocks"]["attn1"]["to_q"]["kernel"], want, rtol=1e-6)
  np.testing.assert_array_equal(merged["blocks"]["attn2"]["to_q"]["kernel"],
                                base["blocks"]["attn2"]["to_q"]["kernel"])


class SyntheticLatents:
  """Encoded-data batches (what --mode=encode writes) with a saveable position."""

  def __init__(self):
    self.pos = 0

  def __next__(self):
    r = np.random.default_rng(self.pos)
    self.pos += 1
    b, text = LATENT[0], (LATENT[0], wan_tiny.TEXT_LEN, 32)
    mask = np.arange(wan_tiny.TEXT_LEN)[None].repeat(b, 0) < 5
    return {"latent_mean": r.standard_normal(LATENT).astype(np.float32),
            "latent_std": np.full(LATENT, 0.1, np.float32),
            "caption_emb": r.standard_normal(text).astype(np.float16), "caption_mask": mask,
            "prompt_emb": r.standard_normal(text).astype(np.float16), "prompt_mask": mask}

  def get_state(self):
    return {"pos": self.pos}

  def set_state(self, s):
    self.pos = s["pos"]


def _trainer(cfg):
  null = (np.zeros((wan_tiny.TEXT_LEN, 32), np.float32), np.arange(wan_tiny.TEXT_LEN) == 0)
  mesh = mesh_lib.make_mesh(cfg.mesh, devices=jax.devices()[:1])
  return train.Trainer(cfg, weights.latent_stats(cfg, ""), null, LATENT, wan_tiny.TEXT_LEN,
                       mesh=mesh)


def _train(cfg, workdir, steps):
  cfg.train.num_steps = steps
  trainer = _trainer(cfg)
  state = loop.train_loop(workdir=workdir, ckpt_dir=paths.dit_checkpoints(workdir),
                          train_cfg=cfg.train, init_state=trainer.init_state,
                          abstract_state=trainer.abstract_state, step_fn=trainer.step,
                          data_iter=SyntheticLatents(), to_device=trainer.to_device)
  return trainer, state


def _paths(tree):
  return [tuple(getattr(k, "key", getattr(k, "name", k)) for k in p)
          for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_lora_trains_and_checkpoints_only_adapters(root, tmp_path):
  cfg = lora_config(root)
  wd = str(tmp_path / "run")
  trainer, state = _train(cfg, wd, 2)
  base = weights.load_dit(cfg)
  # The frozen base is bit-identical after training; the adapters moved (B off zero).
  jax.tree.map(np.testing.assert_array_equal, trainer.base_params(), base)
  assert all(p[-1] in ("lora_a", "lora_b") for p in _paths(state["params"]))
  assert np.abs(np.asarray(state["params"]["blocks"]["ffn"]["fc2"]["lora_b"])).max() > 0

  # Checkpoints: adapters (+ their optimizer moments and EMA), step and rng only.
  saved, _ = checkpoint.read_tree(paths.dit_checkpoints(wd))
  assert sorted(saved) == ["ema", "opt", "params", "rng", "step"]
  sizes = {p: np.size(x) for p, x in zip(_paths(saved), jax.tree.leaves(saved))}
  big = [p for p, n in sizes.items() if n > 1 and p[0] != "rng"]
  assert big and all(p[-1] in ("lora_a", "lora_b") for p in big), big
  n_base = sum(np.size(x) for x in jax.tree.leaves(base))
  n_adapters = sum(np.size(x) for x in jax.tree.leaves(state["params"]))
  # params, EMA and the two Adam moments: 4 adapter-sized trees; + step, rng, counters.
  assert sum(sizes.values()) <= 4 * n_adapters + 16 and n_adapters < n_base / 4

  # A resume restores exactly this adapter state, sharded as a fresh start would be.
  restored, _, step = Checkpointer(paths.dit_checkpoints(wd), every=2).restore(
      trainer.abstract_state)
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, restored, state)


def test_full_fine_tune_starts_from_the_open_weights(root):
  cfg = wan_tiny.tiny_config(root)
  trainer = _trainer(cfg)
  state = trainer.init_state()
  jax.tree.map(np.testing.assert_array_equal, state["params"], weights.load_dit(cfg))
  jax.tree.map(np.testing.assert_array_equal, state["ema"], state["params"])
  assert trainer._base is None  # pylint: disable=protected-access


def test_lora_configuration_errors(root):
  cfg = lora_config(root)
  cfg.weights = ""
  with pytest.raises(ConfigError, match="--config.weights"):
    config_check.check(cfg, "train")
  with pytest.raises(ConfigError, match="--config.weights"):
    _trainer(cfg)
  cfg = lora_config(root, targets="q,mlp")
  with pytest.raises(ConfigError, match="lora_targets"):
    config_check.check(cfg, "train")
  with pytest.raises(ConfigError, match="lora_targets"):
    lora.target_modules(cfg.train.lora_targets)
  # Adapters of another rank or target set than the config: the first mismatch is named.
  cfg = lora_config(root)
  shapes = dit_lib.param_shapes(cfg)
  adapters = nn.unbox(jax.eval_shape(lambda: lora.init_adapters(jax.random.key(0), shapes,
                                                                cfg.train)))
  lora.check_adapters(adapters, shapes, cfg.train)
  other = lora_config(root, rank=8)
  with pytest.raises(ConfigError, match="blocks/attn1/to_k/lora_a"):
    lora.check_adapters(adapters, shapes, other.train)
  fewer = lora_config(root, targets="q,k,v,o")
  with pytest.raises(ConfigError, match="blocks/ffn/fc1/lora_a"):
    lora.check_adapters(adapters, shapes, fewer.train)
