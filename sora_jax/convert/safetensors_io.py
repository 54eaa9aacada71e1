"""Read (and write) safetensors files with numpy, without torch, bfloat16 and float8 included.

The reader parses the documented format (8-byte little-endian header length, JSON header,
raw little-endian data) and memory-maps every tensor as a numpy array with `ml_dtypes`
types, so a 20 GB checkpoint costs no memory until a tensor is used and each host reads
only the slices of its shards with plain numpy indexing. (`safetensors.numpy.load_file`
reads bfloat16 too, but whole files into memory; `safe_open(..., framework="np")` reads
lazily through its own slice objects, not arrays.) `write_file` streams tensors out one at
a time (exported fine-tuned checkpoints); tests/test_safetensors_io.py checks both against
the safetensors library.

Paths may be bucket URLs (sora_jax.paths): a bucket file is copied to a local temporary
file first (memory-mapping needs one; deleted at once, its data live while mapped), so a
host reads the whole of it from the bucket and needs that much free local disk. A bucket
destination is written locally, then uploaded.
"""
import json
import struct

import ml_dtypes
import numpy as np

from sora_jax import paths

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}


def read_file(path: str) -> dict[str, np.ndarray]:
  """One .safetensors file -> {name: read-only memory-mapped array}."""
  with paths.local_file(path) as local:
    with open(local, "rb") as f:
      (n,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(n))
    data = np.memmap(local, dtype=np.uint8, mode="r", offset=8 + n)
  header.pop("__metadata__", None)
  out = {}
  for name, info in header.items():
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    out[name] = data[start:end].view(_DTYPES[info["dtype"]]).reshape(info["shape"])
  return out


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """A .safetensors file, or every *.safetensors in a folder (sharded checkpoints), merged."""
  p = paths.path(path)
  if p.is_file():
    files = [path]
  elif p.is_dir():
    files = sorted(str(f) for f in p.glob("*.safetensors"))
    if not files:
      raise FileNotFoundError(f"no *.safetensors files in {path}")
  else:
    raise FileNotFoundError(f"{path} is neither a .safetensors file nor a folder")
  out = {}
  for f in files:
    for name, arr in read_file(f).items():
      if name in out:
        raise ValueError(f"tensor {name!r} appears in more than one file under {path}")
      out[name] = arr
  return out


_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def write_file(path: str, tensors: dict, metadata: dict[str, str] | None = None) -> None:
  """Writes a .safetensors file, one tensor at a time (bfloat16 included).

  tensors: name -> array, or name -> (shape, dtype, produce) where `produce()` returns the
  array only when it is written, so a large file never has to be in memory at once.
  Written through `paths.atomic_writer` (locally `path` + '.tmp', then renamed), so a crash
  leaves no partial file under `path`.
  """
  specs = {}
  for name, t in tensors.items():
    if isinstance(t, tuple):
      specs[name] = (tuple(t[0]), np.dtype(t[1]), t[2])
    else:
      specs[name] = (tuple(t.shape), np.dtype(t.dtype), lambda t=t: t)
  header, offset = {}, 0
  for name, (shape, dtype, _) in specs.items():
    if dtype not in _NAMES:
      raise ValueError(f"tensor {name!r}: dtype {dtype} cannot be written to safetensors")
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    header[name] = {"dtype": _NAMES[dtype], "shape": list(shape),
                    "data_offsets": [offset, offset + size]}
    offset += size
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # The format pads the header to 8-byte alignment.
  with paths.atomic_writer(path) as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name, (shape, dtype, produce) in specs.items():
      arr = np.ascontiguousarray(produce(), dtype=dtype)
      if arr.shape != shape:
        raise ValueError(f"tensor {name!r} was declared {shape} but produced {arr.shape}")
      f.write(arr.tobytes())
