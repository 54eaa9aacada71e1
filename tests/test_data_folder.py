"""The video-folder builder: user videos + captions -> bucketed clips; bad files skipped."""
import json
import os

import numpy as np
import pytest

from sora_jax.config_defaults import base_config
from sora_jax.data import build
from sora_jax.data import pipeline
from sora_jax.data import tfds_folder
from sora_jax.data import video_io


def _moving_square(t, h, w, color):
  v = np.full((t, h, w, 3), 90, np.uint8)
  for i in range(t):
    x = 2 + i % (w - 12)
    v[i, h // 3:h // 3 + 10, x:x + 10] = color
  return v


def _cfg(video_dir, **data):
  cfg = base_config()
  cfg.data.name = "video_folder"
  cfg.data.video_dir = str(video_dir)
  cfg.data.buckets = "5x32x32,1x32x32,5x32x48"
  cfg.data.val_fraction = 0.0
  cfg.data.build_workers = 1
  for k, v in data.items():
    cfg.data[k] = v
  return cfg


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """wide.mp4 (17 frames, 8 fps, 32x48), square.gif (24 frames, 16 fps, 40x40), a still
  png, and cut.mp4 (truncated); captions from a .txt, captions.jsonl and captions.csv."""
  d = tmp_path_factory.mktemp("videos")
  wide = _moving_square(17, 32, 48, (220, 40, 40))
  video_io.write_mp4(str(d / "wide.mp4"), wide, fps=8)
  (d / "wide.txt").write_text("a red square sliding right\n")
  video_io.write_gif(str(d / "square.gif"), _moving_square(24, 40, 40, (50, 80, 230)), fps=16)
  os.makedirs(d / "stills")
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(_moving_square(1, 30, 40, (40, 190, 60))[0]).save(d / "stills" / "s.png")
  good = (d / "wide.mp4").read_bytes()
  (d / "cut.mp4").write_bytes(good[:len(good) // 2])
  (d / "captions.jsonl").write_text(
      json.dumps({"file": "square.gif", "caption": "a blue square"}) + "\n" +
      json.dumps({"file": "cut.mp4", "caption": "broken"}) + "\n")
  (d / "captions.csv").write_text("file,caption\nstills/s.png,\"a green square, still\"\n")
  return d, wide


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory):
  d, _ = folder
  data_dir = str(tmp_path_factory.mktemp("data"))
  builder = build.make_builder(_cfg(d), data_dir)
  builder.download_and_prepare()
  return builder, data_dir


def test_clips_land_in_the_nearest_bucket(built):
  builder, _ = built
  s = build.summary(builder)
  # wide.mp4 -> 3 clips of 5 at 32x48; square.gif at 8 fps is 12 frames -> 2 clips of 5 at
  # 32x32; the 30x40 png is nearest to 32x48, which has no 1-frame bucket, so it goes
  # to 1x32x32; cut.mp4 is skipped.
  assert s == {"train": {"5x32x48": 3, "5x32x32": 2, "1x32x32": 1}}


def test_corrupt_file_is_skipped_counted_and_named(built):
  builder, _ = built
  summary = builder.info.metadata["summary"]
  assert summary["files"] == 4 and summary["used"] == 3 and summary["skipped"] == 1
  assert list(summary["skipped_files"]) == ["cut.mp4"]
  on_disk = json.loads((builder.data_path / tfds_folder.SUMMARY_FILE).read_text())
  assert on_disk["skipped_files"] == summary["skipped_files"]


def test_clip_content_and_captions(built, folder):
  builder, data_dir = built
  d, wide = folder
  src = builder.as_data_source(split="train")
  by_caption = {}
  for i in range(len(src)):
    r = src[i]
    assert r["prompt"] == r["caption"] and r["spec"] == b"{}"
    by_caption.setdefault(r["caption"].decode(), []).append(r["video"])
  assert sorted(by_caption) == ["a blue square", "a green square, still",
                                "a red square sliding right"]
  first_wide = by_caption["a red square sliding right"][0]
  assert first_wide.shape == (5, 32, 48, 3)
  assert np.abs(first_wide.astype(int) - wide[:5]).mean() < 6  # same frames, lossy codec
  it = pipeline.make_iterator(_cfg(d), data_dir, batch_size=1, repeat=False,
                              process_index=0, process_count=1)
  assert sorted(b["video"].shape[1:4] for b in it) == sorted(
      [(5, 32, 48)] * 3 + [(5, 32, 32)] * 2 + [(1, 32, 32)])


def test_missing_captions_are_listed_before_decoding(tmp_path):
  (tmp_path / "a.mp4").write_bytes(b"not decoded: the caption check comes first")
  (tmp_path / "b.gif").write_bytes(b"")
  (tmp_path / "c.webm").write_bytes(b"")
  (tmp_path / "c.txt").write_text("captioned")
  with pytest.raises(tfds_folder.MissingCaptionsError, match=r"2 of 3 .*a\.mp4, b\.gif"):
    build.make_builder(_cfg(tmp_path), str(tmp_path / "data"))


def test_bucket_choice_and_holdout():
  buckets = [(5, 32, 32), (1, 32, 32), (5, 32, 48), (5, 64, 96)]
  assert tfds_folder.choose_size(buckets, 1080, 1920) == (64, 96)  # 16:9 -> nearest 3:2
  assert tfds_folder.choose_size(buckets, 40, 60) == (32, 48)  # no upscaling to 64x96
  assert tfds_folder.choose_size(buckets, 20, 30) == (32, 48)  # smallest when all upscale
  assert tfds_folder.choose_size(buckets, 480, 480) == (32, 32)
  files = [(f"v{i}.mp4", "c") for i in range(40)]
  split = tfds_folder.split_files(files, 0.1, seed=0)
  assert len(split["validation"]) == 4 and len(split["train"]) == 36
  assert split == tfds_folder.split_files(files, 0.1, seed=0)
  assert not set(split["validation"]) & set(split["train"])


def test_training_after_adding_videos_uses_the_last_build(tmp_path):
  videos = tmp_path / "videos"
  videos.mkdir()
  video_io.write_gif(str(videos / "a.gif"), _moving_square(5, 32, 32, (220, 40, 40)), fps=8)
  (videos / "a.txt").write_text("a red square")
  data_dir = str(tmp_path / "data")
  build.make_builder(_cfg(videos), data_dir).download_and_prepare()
  video_io.write_gif(str(videos / "b.gif"), _moving_square(5, 32, 32, (50, 80, 230)), fps=8)
  (videos / "b.txt").write_text("a blue square")
  it = pipeline.make_iterator(_cfg(videos), data_dir, batch_size=1, repeat=False,
                              process_index=0, process_count=1)
  assert [b["caption"][0] for b in it] == ["a red square"]
