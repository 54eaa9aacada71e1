"""Where things live inside a workdir (one place, so every mode agrees), and the one path
abstraction every file the project reads or writes goes through.

A workdir (and `data.data_dir`, `data.video_dir`, `weights`, `text.path`, `train.init_from`,
`sample.output_dir`, `sample.image` / `video`, a LoRA export's folder) may be a local path
or a bucket URL (`gs://BUCKET/run`). Files go through `etils.epath` (gcsfs for `gs://`),
arrays through orbax/tensorstore; `os.path` and `open` would turn `gs://B/run` into the
local folder `./gs:/B/run`. Libraries that read or write only local files (PyAV,
np.memmap, array_record) get a local stand-in: `local_file`, `local_dir`, `atomic_writer`.
"""
import contextlib
import importlib.util
import json
import io
import os
import shutil
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
    _fs(p).invalidate_cache()


def read_text(p, newline: str | None = None) -> str:
  """File `p` as UTF-8 text, line ends as `open(p, encoding="utf-8", newline=newline)`
  gives them (None: Windows and old Mac line ends read as a newline; "": kept as they are).
  epath's text mode would decode a bucket file with the locale's encoding."""
  return io.StringIO(path(p).read_bytes().decode("utf-8"), newline=newline).read()


def walk(p):
  """os.walk(p), top down, for a bucket folder too: yields (folder relative to `p`, '' at
  the top; its subfolder names; its file names). Sorting or pruning the subfolder list in
  place steers the descent, as with os.walk."""
  if not is_remote(p):
    for d, dirs, names in os.walk(p):
      rel = os.path.relpath(d, p)
      yield ("" if rel == "." else rel), dirs, names
    return
  fs = _fs(p)
  top = fs._strip_protocol(str(p)).rstrip("/")  # pylint: disable=protected-access
  for d, dirs, names in fs.walk(top):
    yield d[len(top) + 1:], dirs, names


def _fs(p):
  from etils.epath import backend  # pylint: disable=g-import-not-at-top
  return backend.fsspec_backend.fs(str(p))


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
    copy_file(f, target)


_CHUNK = 1 << 24  # 16 MiB: copies stream, so a multi-GB weights file never sits in memory.


def copy_file(src, dst) -> None:
  """Copies file `src` to `dst` (either may be a bucket), streaming. A failed copy to a
  bucket leaves no object: closing would commit what was sent, so the upload is dropped."""
  with path(src).open("rb") as i:
    o = path(dst).open("wb")
    try:
      shutil.copyfileobj(i, o, _CHUNK)
    except BaseException:
      if is_remote(dst):
        o.discard()  # cancels a multi-part upload already begun
        o.closed = True  # else closing (or garbage collection) uploads the buffered part
      o.close()
      raise
    o.close()


def link_or_copy(src, dst) -> None:
  """Makes `dst` stand for file or folder `src`: a symlink when both are local, else (a
  bucket has no links) a copy. Nothing happens where `dst` exists, a broken link too."""
  if not (is_remote(src) or is_remote(dst)):
    if not os.path.lexists(dst):
      os.symlink(src, dst)
    return
  if path(dst).exists():
    return
  if path(src).is_dir():
    copy_tree(src, dst)
  else:
    copy_file(src, dst)


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
  with atomic_writer(p) as f:
    f.write(data)


def write_json(p, obj) -> None:
  """`obj` as indented JSON in file `p`, written whole or not at all (write_bytes_atomic)."""
  write_bytes_atomic(p, json.dumps(obj, indent=1).encode())


@contextlib.contextmanager
def atomic_writer(p):
  """A binary file to write `p` through; `p` then exists whole or not at all (a failed
  write leaves any earlier `p`). Locally `p`.tmp, renamed over `p`; for a bucket a local
  temporary file, uploaded once complete (an object appears only when its upload ends)."""
  if not is_remote(p):
    tmp = str(p) + ".tmp"
    with open(tmp, "wb") as f:
      yield f
    os.replace(tmp, p)
    return
  with tempfile.TemporaryDirectory(prefix="sora_jax_") as d:
    local = os.path.join(d, path(p).name)
    with open(local, "wb") as f:
      yield f
    path(p).parent.mkdir(parents=True, exist_ok=True)
    copy_file(local, p)


@contextlib.contextmanager
def local_file(p):
  """A local file holding `p`'s bytes while a library that reads only local files (PyAV,
  np.memmap, safetensors, torch.load) opens it: `p` itself, or for a bucket a temporary
  copy under the same name (FFmpeg picks a format by its extension), deleted on exit. A
  file opened or memory-mapped inside stays readable after: Linux keeps a deleted file's
  data while a descriptor or mapping holds it."""
  if not is_remote(p):
    yield str(p)
    return
  with tempfile.TemporaryDirectory(prefix="sora_jax_") as d:
    local = os.path.join(d, path(p).name)
    copy_file(p, local)
    yield local


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


def load_config(p):
  """`get_config()` of the Python config file `p` (a workdir's config.py), local or on a
  bucket (read through a local copy)."""
  with local_file(p) as local:
    spec = importlib.util.spec_from_file_location("sora_jax_loaded_config", local)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
