"""ShapesWorld TFDS builder, the Grain pipeline over it, and `--mode=data`.

Properties a user relies on: the data set holds exactly generate_clip's clips; batches
hold one bucket; processes read disjoint parts that together are everything; a restored
iterator continues with the batch that was next.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sora_jax.config_check import ConfigError
from sora_jax.config_defaults import base_config
from sora_jax.data import build
from sora_jax.data import pipeline
from sora_jax.data import shapes_world
from sora_jax.data import tfds_shapes

BUCKETS = "5x32x32,1x32x32,5x32x48"


def _cfg(**data):
  cfg = base_config()
  cfg.data.buckets = BUCKETS
  cfg.data.num_train = 14
  cfg.data.num_val = 7
  cfg.data.build_workers = 1
  cfg.data.prefetch = 2
  for k, v in data.items():
    cfg.data[k] = v
  return cfg


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("data"))
  build.make_builder(_cfg(), d).download_and_prepare()
  return d


def _all(it):
  return list(it)


def test_records_equal_generate_clip_for_their_seed(data_dir):
  cfg = _cfg()
  builder = build.source_builder(cfg, data_dir)
  buckets = tfds_shapes.config_from_cfg(cfg.data).buckets
  for split, n in (("train", 14), ("validation", 7)):
    src = builder.as_data_source(split=split)
    _, ids = pipeline.bucket_index(builder.info.metadata, split)
    assert len(src) == len(ids) == n
    for i in range(n):
      t, h, w = buckets[ids[i]]
      want = shapes_world.generate_clip(tfds_shapes.clip_seed(0, split, i), t, h, w,
                                        two_object_fraction=0.5)
      got = src[i]
      assert got["video"].dtype == np.uint8 and got["video"].tobytes() == want["video"].tobytes()
      assert got["video"].shape == want["video"].shape == (t, h, w, 3)
      assert got["prompt"].decode() == want["prompt"]
      assert got["caption"].decode() == want["caption"]
      assert json.loads(got["spec"]) == want["spec"]


def test_clips_spread_over_buckets_and_splits_differ(data_dir):
  meta = build.source_builder(_cfg(), data_dir).info.metadata
  assert meta["bucket_runs"]["train"] == [[0, 5], [1, 5], [2, 4]]
  assert meta["bucket_runs"]["validation"] == [[0, 3], [1, 2], [2, 2]]
  assert tfds_shapes.clip_seed(0, "train", 0) != tfds_shapes.clip_seed(0, "validation", 0)


def test_each_config_gets_its_own_data_set(data_dir):
  names = {tfds_shapes.config_from_cfg(_cfg(**kw).data).name for kw in
           ({}, {"num_train": 15}, {"seed": 1}, {"two_object_fraction": 0.25},
            {"buckets": "5x32x32"})}
  assert len(names) == 5
  with pytest.raises(ConfigError, match="run --mode=data first"):
    pipeline.make_iterator(_cfg(seed=1), data_dir, process_index=0, process_count=1)


def test_train_batches_hold_one_bucket_and_cover_every_record_each_epoch(data_dir):
  it = pipeline.make_iterator(_cfg(), data_dir, batch_size=4, process_index=0, process_count=1)
  per_epoch = it.plan.steps_per_epoch  # ceil(5/4) + ceil(5/4) + ceil(4/4) = 5
  assert per_epoch == 5
  seen = []
  for _ in range(2):
    epoch = [next(it) for _ in range(per_epoch)]
    for b in epoch:
      t, h, w = b["video"].shape[1:4]
      assert (t, h, w) in [(5, 32, 32), (1, 32, 32), (5, 32, 48)]
      assert b["video"].shape == (4, t, h, w, 3) and b["mask"].all()
      assert b["prompt"].shape == (4,) and isinstance(b["prompt"][0], str)
      json.loads(b["spec"][0])
    indices = np.concatenate([b["index"] for b in epoch])
    assert set(indices) == set(range(14))
    seen.append(indices)
  assert not np.array_equal(seen[0], seen[1])  # epochs are reshuffled


@pytest.mark.parametrize("repeat", [True, False])
def test_two_processes_read_disjoint_parts_that_make_the_whole(data_dir, repeat):
  cfg = _cfg()
  kw = dict(batch_size=4, repeat=repeat, split="train")
  whole = pipeline.make_iterator(cfg, data_dir, process_index=0, process_count=1, **kw)
  parts = [pipeline.make_iterator(cfg, data_dir, process_index=p, process_count=2, **kw)
           for p in (0, 1)]
  steps = 8 if repeat else whole.plan.steps_per_epoch
  covered = []
  for _ in range(steps):
    g, a, b = next(whole), next(parts[0]), next(parts[1])
    assert a["video"].shape[0] == b["video"].shape[0] == 2
    assert a["video"].shape == b["video"].shape  # same bucket on both processes
    np.testing.assert_array_equal(np.concatenate([a["index"], b["index"]]), g["index"])
    np.testing.assert_array_equal(np.concatenate([a["video"], b["video"]]), g["video"])
    for part in (a, b):
      covered.extend(part["index"][part["mask"]].tolist())
  if not repeat:
    # One pass: every record exactly once over both processes; padding rows are masked.
    assert sorted(covered) == list(range(14))
    with pytest.raises(StopIteration):
      next(parts[0])


@pytest.mark.parametrize("weights", ["", "1,2,1"])
def test_restored_iterator_continues_with_the_next_batch(data_dir, weights):
  cfg = _cfg(bucket_weights=weights)
  it = pipeline.make_iterator(cfg, data_dir, batch_size=2, process_index=1, process_count=2)
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(3)]
  fresh = pipeline.make_iterator(cfg, data_dir, batch_size=2, process_index=1, process_count=2)
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    np.testing.assert_array_equal(got["index"], want["index"])
    np.testing.assert_array_equal(got["video"], want["video"])
    assert list(got["caption"]) == list(want["caption"])


def test_bucket_filter_and_weights(data_dir):
  only_images = pipeline.make_iterator(_cfg(), data_dir, batch_size=2, process_index=0,
                                       process_count=1, buckets="1x32x32")
  assert {next(only_images)["video"].shape[1] for _ in range(6)} == {1}
  wide_only = pipeline.make_iterator(_cfg(bucket_weights="0,0,1"), data_dir, batch_size=2,
                                     process_index=0, process_count=1)
  assert {next(wide_only)["video"].shape[3] for _ in range(6)} == {48}
  with pytest.raises(ValueError, match="not in this data set"):
    pipeline.make_iterator(_cfg(), data_dir, process_index=0, process_count=1,
                           buckets="9x32x32")


def test_batch_plan_is_generic_over_sources():
  """Any random-access source + bucket ids (e.g. encoded latents) batches the same way."""
  ids = np.array([0] * 5 + [1] * 3)
  source = [{"latent": np.full((2, 4, 4, 8), i, np.float32), "prompt": f"p{i}"}
            for i in range(8)]
  it = pipeline.make_loader(source, ids, batch_size=2, seed=0, repeat=False, prefetch=0)
  batches = _all(it)
  assert [b["latent"].shape for b in batches] == [(2, 2, 4, 4, 8)] * 5
  assert sorted(i for b in batches for i in b["index"][b["mask"]]) == list(range(8))
  assert all(len({ids[i] for i in b["index"]}) == 1 for b in batches)


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(data_dir):
  cfg = _cfg()
  ref = pipeline.make_iterator(cfg, data_dir, batch_size=4, process_index=0, process_count=1)
  cfg.data.worker_count = 1
  mp = pipeline.make_iterator(cfg, data_dir, batch_size=4, process_index=0, process_count=1)
  for _ in range(3):
    np.testing.assert_array_equal(next(ref)["index"], next(mp)["index"])


@pytest.mark.slow
def test_parallel_build_equals_serial_build(tmp_path):
  cfg = _cfg(buckets="1x16x16", num_train=260, num_val=1)
  sources = []
  for workers in (1, 2):  # 2 workers and 261 clips start a process pool
    cfg.data.build_workers = workers
    d = str(tmp_path / f"w{workers}")
    build.make_builder(cfg, d).download_and_prepare()
    sources.append(build.source_builder(cfg, d).as_data_source(split="train"))
  serial, parallel = sources
  assert len(serial) == len(parallel) == 260
  for i in range(260):
    assert serial[i]["video"].tobytes() == parallel[i]["video"].tobytes()
    assert serial[i]["caption"] == parallel[i]["caption"]


def test_data_mode_end_to_end(tmp_path):
  cmd = [sys.executable, "-m", "sora_jax", "--config=configs/shapes_tiny.py",
         f"--workdir={tmp_path}", "--mode=data", "--config.data.num_train=16",
         "--config.data.num_val=8", "--config.data.build_workers=1"]
  root = os.path.join(os.path.dirname(__file__), "..")
  first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root)
  assert first.returncode == 0, first.stderr[-2000:]
  assert "[data] train: 16 clips (17x32x32: 8, 1x32x32: 8)" in first.stdout
  assert "[data] validation: 8 clips (17x32x32: 4, 1x32x32: 4)" in first.stdout
  again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root)
  assert again.returncode == 0 and "already built" in again.stdout
  cfg = base_config()
  cfg.data.num_train, cfg.data.num_val = 16, 8
  it = pipeline.make_iterator(cfg, str(tmp_path / "data"), batch_size=8, process_index=0,
                              process_count=1)
  assert next(it)["video"].shape[0] == 8


def test_first_records_keeps_the_head_of_each_bucket_by_size():
  ids_R = np.array([0] * 6 + [1] * 3 + [-1] * 2 + [1] * 3)
  kept = pipeline.first_records(ids_R, 6)
  assert kept.tolist() == [0, 0, 0, -1, -1, -1, 1, 1, 1, -1, -1, -1, -1, -1]
  assert pipeline.first_records(ids_R, 0) is ids_R
  assert pipeline.first_records(ids_R, 100) is ids_R
