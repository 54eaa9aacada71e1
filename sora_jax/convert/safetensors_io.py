"""Read safetensors files into numpy without torch, bfloat16 and float8 included.

`safetensors.numpy` refuses bfloat16 (numpy has no such dtype), and the public Wan / umT5
checkpoints are bfloat16; this reader parses the documented format (8-byte little-endian
header length, JSON header, raw little-endian data) and memory-maps the tensors with
`ml_dtypes` types, so a 20 GB checkpoint costs no memory until a tensor is used.
"""
import glob
import json
import os
import struct

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}


def read_file(path: str) -> dict[str, np.ndarray]:
  """One .safetensors file -> {name: read-only memory-mapped array}."""
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
  header.pop("__metadata__", None)
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
  out = {}
  for name, info in header.items():
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    out[name] = data[start:end].view(_DTYPES[info["dtype"]]).reshape(info["shape"])
  return out


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """A .safetensors file, or every *.safetensors in a folder (sharded checkpoints), merged."""
  if os.path.isfile(path):
    files = [path]
  elif os.path.isdir(path):
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
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
