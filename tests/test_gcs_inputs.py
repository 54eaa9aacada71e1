"""User inputs on a bucket read as the same inputs on local disk: safetensors files and
open-weights folders (DiT, VAE, umT5 + tokenizer), a `data.video_dir` built into the same
records, `sample.image` / `sample.video`; and a LoRA export written to a bucket holds the
same files as a local one. Against conftest.py's GCS emulator; nothing may land under a
local `./gs:` folder.
"""
import json

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from sora_jax import paths
from sora_jax.config_defaults import base_config
from sora_jax.convert import safetensors_io
from sora_jax.data import build
from sora_jax.data import video_io

BUCKET = "gs://test-bucket/inputs"


def _upload(local, url):
  paths.copy_tree(local, url)
  paths.forget_listings(url)
  return url


def _same_arrays(got: dict, want: dict):
  assert sorted(got) == sorted(want)
  for k in want:
    assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
    np.testing.assert_array_equal(np.asarray(got[k]).view(np.uint8),
                                  np.asarray(want[k]).view(np.uint8))


def test_safetensors_read_from_and_written_to_a_bucket(gcs, tmp_path, no_local_gs, monkeypatch):
  del gcs
  r = np.random.default_rng(0)
  shards = {"model-00001-of-00002.safetensors": {
                "w": r.standard_normal((3, 5)).astype(ml_dtypes.bfloat16),
                "i": np.arange(4, dtype=np.int64).reshape(2, 2)},
            "model-00002-of-00002.safetensors": {
                "b": r.standard_normal((5,)).astype(np.float32)}}
  local = tmp_path / "model"
  local.mkdir()
  for name, tensors in shards.items():  # the library's own writer, not ours
    safetensors.numpy.save_file(tensors, str(local / name))
  url = _upload(local, f"{BUCKET}/model")
  want = {k: v for t in shards.values() for k, v in t.items()}
  _same_arrays(safetensors_io.read_tensors(str(local)), want)
  _same_arrays(safetensors_io.read_tensors(url), want)  # a folder of shards
  one = f"{url}/model-00002-of-00002.safetensors"
  _same_arrays(safetensors_io.read_tensors(one), shards["model-00002-of-00002.safetensors"])

  # Our streaming writer: the bucket object has the local file's bytes; nothing is left
  # beside it (no .tmp object).
  streamed = {k: (v.shape, v.dtype, lambda v=v: v) for k, v in want.items()}
  safetensors_io.write_file(str(tmp_path / "out.safetensors"), streamed, {"format": "pt"})
  safetensors_io.write_file(f"{BUCKET}/out/out.safetensors", streamed, {"format": "pt"})
  paths.forget_listings(f"{BUCKET}/out")
  assert [p.name for p in paths.path(f"{BUCKET}/out").iterdir()] == ["out.safetensors"]
  assert (paths.path(f"{BUCKET}/out/out.safetensors").read_bytes()
          == (tmp_path / "out.safetensors").read_bytes())

  # A write that fails leaves the earlier file; an upload cut off part-way leaves no object.
  def fail():
    raise RuntimeError("producer failed")
  with pytest.raises(RuntimeError):
    safetensors_io.write_file(f"{BUCKET}/out/out.safetensors", {"x": ((2,), np.float32, fail)})
  assert (paths.path(f"{BUCKET}/out/out.safetensors").read_bytes()
          == (tmp_path / "out.safetensors").read_bytes())

  def cut(src, dst, length):  # sends a part, then the connection drops
    del length
    dst.write(src.read(100))
    raise ConnectionError("cut")
  with monkeypatch.context() as m, pytest.raises(ConnectionError):
    m.setattr(paths.shutil, "copyfileobj", cut)
    paths.copy_file(tmp_path / "out.safetensors", f"{BUCKET}/out/cut.safetensors")
  paths.forget_listings(f"{BUCKET}/out")
  assert not paths.path(f"{BUCKET}/out/cut.safetensors").exists()
  no_local_gs()


# ------------------------------------------------------------------ open weights + LoRA
@pytest.fixture(scope="module")
def wan(tmp_path_factory, gcs):
  """(local folder, bucket copy) of the tiny random Wan 2.1 diffusers folder."""
  del gcs
  pytest.importorskip("torch")
  pytest.importorskip("diffusers")
  import wan_tiny  # pylint: disable=g-import-not-at-top  (tests/ is on sys.path)
  root = str(tmp_path_factory.mktemp("wan") / "Wan2.1-T2V-tiny-Diffusers")
  wan_tiny.build(root)
  return root, _upload(root, f"{BUCKET}/Wan2.1-T2V-tiny-Diffusers")


def _tiny_config(weights):
  import wan_tiny  # pylint: disable=g-import-not-at-top
  return wan_tiny.tiny_config(weights)


def test_open_weights_folder_on_a_bucket_loads_like_the_local_one(wan, no_local_gs):
  from sora_jax.config_check import check  # pylint: disable=g-import-not-at-top
  from sora_jax.convert import wan_vae  # pylint: disable=g-import-not-at-top
  from sora_jax.models import weights  # pylint: disable=g-import-not-at-top
  local, url = wan
  ref, cfg = _tiny_config(local), _tiny_config(url)
  check(cfg, "sample")  # weights= is a folder
  same = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  jax.tree.map(same, weights.load_dit(cfg), weights.load_dit(ref))
  jax.tree.map(same, weights.load_vae(cfg), weights.load_vae(ref))
  jax.tree.map(same, wan_vae.load_wan_vae(url)[1], wan_vae.load_wan_vae(local)[1])
  for a, b in zip(weights.config_latent_stats(cfg), weights.config_latent_stats(ref)):
    same(a, b)
  # umT5 from text_encoder/, its tokenizer from the sibling tokenizer/.
  enc, enc_ref = weights.load_text_encoder(cfg), weights.load_text_encoder(ref)
  prompts = ["a red circle moves left", "blue square"]
  jax.tree.map(same, enc.params, enc_ref.params)
  for a, b in zip(enc(prompts), enc_ref(prompts)):
    same(a, b)
  no_local_gs()


def _tree_bytes(root) -> dict[str, bytes]:
  """{relative path: bytes} of every file under `root` (through symlinks, locally)."""
  root = paths.path(root)
  return {str(f.relative_to(root)): f.read_bytes() for f in paths.files(root)}


def test_lora_export_to_a_bucket_writes_the_local_export_files(wan, tmp_path, no_local_gs):
  """Base weights and export folder both on the bucket vs both local: the same files with
  the same bytes (the local export symlinks the base's components; a bucket has no links,
  so there they are copies). No training: adapters are written straight into a checkpoint."""
  from test_lora_export import lora_config, write_checkpoint  # pylint: disable=g-import-not-at-top
  from sora_jax.training import lora  # pylint: disable=g-import-not-at-top
  local, url = wan
  wd = str(tmp_path / "run")
  write_checkpoint(lora_config(local), wd)
  lora.export_merged(lora_config(local), wd, str(tmp_path / "merged"))
  out = f"{BUCKET}/merged"
  assert lora.export_merged(lora_config(url), wd, out) == out
  paths.forget_listings(out)
  want, got = _tree_bytes(tmp_path / "merged"), _tree_bytes(out)
  info = lambda files: json.loads(files.pop("transformer/lora_merged.json"))
  want_info, got_info = info(want), info(got)
  assert got_info.pop("base") == url and want_info.pop("base") == local
  assert got_info == want_info and got_info["workdir"] == wd
  assert sorted(got) == sorted(want) and "transformer/config.json" in got
  for name, data in want.items():
    assert got[name] == data, name
  no_local_gs()


# ------------------------------------------------------------------ videos and images
def _moving_square(t, h, w, color):
  v = np.full((t, h, w, 3), 90, np.uint8)
  for i in range(t):
    v[i, h // 3:h // 3 + 8, 2 + i % (w - 10):2 + i % (w - 10) + 8] = color
  return v


@pytest.fixture(scope="module")
def videos(tmp_path_factory, gcs):
  """(local folder, bucket copy): an mp4 with a .txt caption, a gif captioned in
  captions.jsonl, a png in a subfolder captioned in captions.csv (non-ASCII, a comma)."""
  del gcs
  d = tmp_path_factory.mktemp("videos") / "clips"
  (d / "stills").mkdir(parents=True)
  video_io.write_mp4(str(d / "wide.mp4"), _moving_square(9, 32, 48, (220, 40, 40)), fps=8)
  (d / "wide.txt").write_text("a red square sliding right\n")
  video_io.write_gif(str(d / "square.gif"), _moving_square(10, 32, 32, (50, 80, 230)), fps=8)
  (d / "captions.jsonl").write_text(json.dumps({"file": "square.gif", "caption": "blue"}) + "\n")
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(_moving_square(1, 30, 40, (40, 190, 60))[0]).save(d / "stills" / "s.png")
  (d / "captions.csv").write_bytes("file,caption\r\nstills/s.png,\"vert, still — é\"\r\n"
                                   .encode("utf-8"))
  return str(d), _upload(d, f"{BUCKET}/clips")


def _folder_cfg(video_dir):
  cfg = base_config()
  cfg.data.name, cfg.data.video_dir = "video_folder", video_dir
  cfg.data.buckets, cfg.data.val_fraction, cfg.data.build_workers = "5x32x32,1x32x32,5x32x48", 0, 1
  return cfg


def _records(builder) -> list[dict]:
  src = builder.as_data_source(split="train")
  return [src[i] for i in range(len(src))]


def test_video_dir_on_a_bucket_builds_the_local_records(videos, tmp_path, no_local_gs):
  from sora_jax.config_check import check  # pylint: disable=g-import-not-at-top
  local, url = videos
  check(_folder_cfg(url), "data")  # data.video_dir is a folder
  builders = []
  for video_dir, data_dir in ((local, tmp_path / "data_local"), (url, tmp_path / "data_gcs")):
    builder = build.make_builder(_folder_cfg(video_dir), str(data_dir))
    builder.download_and_prepare()
    builders.append(builder)
  ref, got = builders
  # Same files, captions, sizes (the config's name fingerprints them), same records.
  assert got.builder_config.files == ref.builder_config.files
  assert dict(ref.builder_config.files)["stills/s.png"] == "vert, still — é"
  assert got.builder_config.name == ref.builder_config.name
  assert got.builder_config.video_dir == url
  assert build.summary(got) == build.summary(ref) == {
      "train": {"5x32x48": 1, "5x32x32": 2, "1x32x32": 1}}
  want, have = _records(ref), _records(got)
  assert len(have) == len(want) == 4
  for a, b in zip(have, want):
    assert sorted(a) == sorted(b)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  no_local_gs()


def test_sample_image_and_video_on_a_bucket_read_the_local_pixels(videos, no_local_gs):
  from sora_jax.config_check import check  # pylint: disable=g-import-not-at-top
  from sora_jax.sampling import sample  # pylint: disable=g-import-not-at-top
  local, url = videos
  inputs = []
  for root in (local, url):
    cfg = base_config()
    s = cfg.sample
    s.task, s.image, s.end_image = "interpolate", f"{root}/stills/s.png", f"{root}/square.gif"
    s.height, s.width, s.num_frames = 16, 16, 5
    check(cfg, "sample")  # sample.image / end_image exist
    inputs.append(sample.load_inputs(s))
    s.task, s.video = "extend", f"{root}/wide.mp4"
    inputs.append(sample.load_inputs(s))
  ref_i, ref_v, got_i, got_v = inputs
  for ref, got in ((ref_i, got_i), (ref_v, got_v)):
    assert sorted(got) == sorted(ref)
    for k in ref:
      np.testing.assert_array_equal(got[k], ref[k])
  assert ref_v["video"].shape == (9, 16, 16, 3)
  np.testing.assert_array_equal(video_io.read_video(f"{url}/wide.mp4")[0],
                                video_io.read_video(f"{local}/wide.mp4")[0])
  with pytest.raises(video_io.VideoReadError, match="no such file"):
    video_io.read_image(f"{url}/missing.png")
  no_local_gs()


def test_prompt_and_job_files_on_a_bucket_read_as_utf8(gcs, tmp_path, no_local_gs):
  from sora_jax.config_check import sample_jobs  # pylint: disable=g-import-not-at-top
  from sora_jax.sampling import sample  # pylint: disable=g-import-not-at-top
  del gcs
  (tmp_path / "prompts.txt").write_bytes("un carré rouge\r\n\r\na blue circle\n".encode())
  (tmp_path / "jobs.jsonl").write_bytes('{"prompt": "un carré"}\r\n{"task": "t2i"}\n'.encode())
  read = {}
  for root in (str(tmp_path), f"{BUCKET}/text"):
    for name in ("prompts.txt", "jobs.jsonl"):
      if root != str(tmp_path):
        paths.copy_file(tmp_path / name, f"{root}/{name}")
    cfg = base_config()
    cfg.sample.prompts_file, cfg.sample.jobs_file = f"{root}/prompts.txt", f"{root}/jobs.jsonl"
    jobs = [(job.sample.prompt, job.sample.task) for _, job in sample_jobs(cfg)]
    read[root] = sample.read_prompts(cfg.sample), jobs
  want, got = read.values()
  assert got == want == (["un carré rouge", "a blue circle"],
                         [("un carré", "t2v"), ("a red circle moving left", "t2i")])
  no_local_gs()
