"""Our safetensors reader and streaming writer agree with the library's own (safetensors.numpy),
bfloat16 included."""
import ml_dtypes
import numpy as np
from safetensors import safe_open
import safetensors.numpy

from sora_jax.convert import safetensors_io


def _tensors():
  rng = np.random.default_rng(0)
  return {"w": rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16),
          "b": rng.standard_normal((5,)).astype(np.float32),
          "i": np.arange(4, dtype=np.int64).reshape(2, 2)}


def test_reader_reads_what_safetensors_writes(tmp_path):
  path = str(tmp_path / "lib.safetensors")
  safetensors.numpy.save_file(_tensors(), path)
  got = safetensors_io.read_tensors(path)
  for name, want in _tensors().items():
    assert got[name].dtype == want.dtype and got[name].shape == want.shape
    np.testing.assert_array_equal(np.asarray(got[name]).view(np.uint8), want.view(np.uint8))


def test_streaming_writer_is_read_by_safetensors(tmp_path):
  path = str(tmp_path / "ours.safetensors")
  t = _tensors()
  streamed = {k: (v.shape, v.dtype, lambda v=v: v) for k, v in t.items()}
  safetensors_io.write_file(path, streamed, metadata={"format": "pt"})
  got = safetensors.numpy.load_file(path)
  for name, want in t.items():
    assert got[name].dtype == want.dtype
    np.testing.assert_array_equal(got[name].view(np.uint8), want.view(np.uint8))
  with safe_open(path, framework="np") as f:
    assert f.metadata() == {"format": "pt"}
