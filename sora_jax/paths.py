"""Where things live inside a workdir (one place, so every mode agrees)."""
import os


def data_dir(cfg, workdir: str) -> str:
  """Built TFDS data sets: config.data.data_dir, or WORKDIR/data."""
  return cfg.data.data_dir or os.path.join(workdir, "data")


def vae_checkpoints(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "vae_checkpoints")


def dit_checkpoints(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def latents_dir(cfg, workdir: str) -> str:
  """The encoded (latents + text embeddings) data set written by --mode=encode."""
  return os.path.join(data_dir(cfg, workdir), "latents")


def latent_stats(workdir: str) -> str:
  """Per-channel latent mean/std measured by --mode=encode (normalises DiT inputs)."""
  return os.path.join(os.path.abspath(workdir), "latent_stats.json")


def samples_dir(cfg, workdir: str) -> str:
  return cfg.sample.output_dir or os.path.join(workdir, "samples")
