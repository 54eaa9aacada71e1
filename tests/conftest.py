"""Test setup shared by every test.

8 virtual CPU devices so mesh tests run anywhere (single-device tests use device 0), a
persistent compilation cache so re-runs skip XLA compiles, which dominate small tests, and
`gcs`: a local GCS emulator serving gs://test-bucket to the bucket tests.
"""
import os
import socket

import pytest

os.environ.setdefault("SORA_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
# Every compile is cached, also in the subprocesses (python -m sora_jax in the end-to-end,
# notebook and multi-host tests): their tiny programs repeat across tests and compile in
# under a second, below the entry point's default threshold.
os.environ.setdefault("SORA_JAX_CACHE_MIN_SECS", "0")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")
# The settings of sora_jax.main.enable_compilation_cache, which cannot be imported here:
# sora_jax.main defines absl flags (--config) that scripts imported by tests define too.
jax.config.update("jax_compilation_cache_dir", os.environ["SORA_JAX_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["SORA_JAX_CACHE_MIN_SECS"]))
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# The longest files (wall seconds on a 2-core host, cold cache, 2026-12-06), started first:
# scripts/test.sh runs whole files per worker (pytest-xdist --dist loadfile) in collection
# order, so a long file collected last would run alone at the end. The rest keep their order.
_LONGEST_FIRST = ("test_gcs_workdir.py", "test_end_to_end.py", "test_mesh_equivalence.py",
                  "test_multihost.py", "test_notebook.py", "test_compile.py", "test_dit.py",
                  "test_vae.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: ties keep order


# ------------------------------------------------------------------ GCS emulator
GCS_BUCKET = "test-bucket"


def _serve_generations():
  """The emulator leaves out the `x-goog-generation` header that GCS sends with every
  download; tensorstore's OCDBT (orbax's array format) needs it once a checkpoint has
  more than a few dozen arrays ("Malformed StorageGeneration"). Add it."""
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top
  plain = objects.download

  def download(request, response, storage, *args, **kwargs):
    plain(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # pylint: disable=broad-except
      return  # not found: the response already says so
    response["x-goog-generation"] = obj["generation"]
    response["x-goog-metageneration"] = obj["metageneration"]

  objects.download = download  # objects.get calls it for ?alt=media
  for _, handlers in server.HANDLERS:
    for method, fn in list(handlers.items()):
      if fn is plain:
        handlers[method] = download


@pytest.fixture
def no_local_gs(tmp_path, monkeypatch):
  """Runs the test in an empty working folder, where `./gs:` would appear if a bucket path
  escaped sora_jax.paths; returns the check that none did (there or in the repository)."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def check():
    assert not (cwd / "gs:").exists() and not os.path.exists(os.path.join(root, "gs:"))
  return check


@pytest.fixture(scope="session")
def gcs():
  """The emulator's endpoint variables (one per client), set in this process too."""
  pytest.importorskip("gcp_storage_emulator")
  from gcp_storage_emulator.server import create_server  # pylint: disable=g-import-not-at-top
  _serve_generations()
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=GCS_BUCKET)
  server.start()
  url = f"http://127.0.0.1:{port}"
  env = {"TENSORSTORE_GCS_HTTP_URL": url, "STORAGE_EMULATOR_HOST": url,
         "CLOUD_STORAGE_EMULATOR_ENDPOINT": url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  yield env
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  server.stop()
