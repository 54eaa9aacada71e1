"""Where things live inside a workdir (one place, so every mode agrees), and the one path
abstraction every file the project reads or writes goes through.

A workdir (and `data.data_dir`, `train.init_from`, `sample.output_dir`) may be a local
path or a bucket URL (`gs://BUCKET/run`). Files go through `etils.epath` (gcsfs for
`gs://`), arrays through orbax/tensorstore; `os.path` and `open` would turn `gs://B/run`
into the local folder `./gs:/B/run`.
"""
import contextlib
import tempfile

from etils import epath


def is_remote(path) -> bool:
  """Whether `path` is a bucket URL (gs://, s3://, ...) rather than a local path."""
  return "://" in str(path)


def path(p) -> epath.Path:
  """`p` as an epath.Path; local paths made absolute (orbax needs absolute directories)."""
  return epath.Path(p) if is_remote(p) else epath.Path(p).expanduser().absolute()


def join(p, *parts: str) -> str:
  """`p`/parts..., a string (local paths absolute)."""
  return str(path(p).joinpath(*parts))


def forget_listings(p) -> None:
  """Drops the cached listings of bucket path `p` (gcsfs keeps them per process, so what
  another process wrote since is otherwise not seen)."""
  if is_remote(p):
    from etils.epath import backend  # pylint: disable=g-import-not-at-top
    backend.fsspec_backend.fs(str(p)).invalidate_cache()


def files(p) -> list[epath.Path]:
  """Every file under folder `p` (epath refuses `**` globs: they cost an RPC per match)."""
  out = []
  for child in path(p).iterdir():
    out += files(child) if child.is_dir() else [child]
  return out


def copy_tree(src, dst) -> None:
  """Copies every file under `src` to the same place under `dst` (either may be a bucket)."""
  src, dst = path(src), path(dst)
  for f in files(src):
    target = dst / f.relative_to(src)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(f.read_bytes())


def write_bytes_atomic(p, data: bytes) -> None:
  """Writes file `p` so that it either exists whole or not at all. Locally: a temporary
  name, then a rename. On a bucket an object appears only once its upload completes, so it
  is written in place: a rename there is a copy and a delete (gcsfs first tries GCS's
  moveTo, which a bucket without hierarchical namespace, or an emulator, refuses only after
  ~30 s of retries)."""
  p = path(p)
  p.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(p):
    p.write_bytes(data)
    return
  tmp = p.parent / (p.name + ".tmp")
  tmp.write_bytes(data)
  tmp.rename(p)


@contextlib.contextmanager
def local_dir(p):
  """A local folder standing in for `p` while a library that writes only local files
  (array_record's writer, PyAV) works; for a bucket its files are copied up after."""
  if not is_remote(p):
    path(p).mkdir(parents=True, exist_ok=True)
    yield str(path(p))
    return
  with tempfile.TemporaryDirectory(prefix="sora_jax_") as tmp:
    yield tmp
    copy_tree(tmp, p)


def data_dir(cfg, workdir: str) -> str:
  """Built TFDS data sets: config.data.data_dir, or WORKDIR/data."""
  return join(cfg.data.data_dir) if cfg.data.data_dir else join(workdir, "data")


def vae_checkpoints(workdir: str) -> str:
  return join(workdir, "vae_checkpoints")


def dit_checkpoints(workdir: str) -> str:
  return join(workdir, "checkpoints")


def latents_dir(cfg, workdir: str) -> str:
  """The encoded (latents + text embeddings) data set written by --mode=encode."""
  return join(data_dir(cfg, workdir), "latents")


def latent_stats(workdir: str) -> str:
  """Per-channel latent mean/std measured by --mode=encode (normalises DiT inputs)."""
  return join(workdir, "latent_stats.json")


def samples_dir(cfg, workdir: str) -> str:
  return join(cfg.sample.output_dir) if cfg.sample.output_dir else join(workdir, "samples")
