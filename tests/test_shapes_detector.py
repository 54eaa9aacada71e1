"""The ShapesWorld yardstick: ground truth scores near its ceiling, noise and broken clips
score nothing, and each attribute fails when, and only when, it is wrong."""
import json

import numpy as np
import pytest

from sora_jax.data import shapes_world as sw
from sora_jax.eval import shapes_detector as sd


def _match_rate(n, T, H, W, fraction, start=0):
  clips = [sw.generate_clip(s, T, H, W, fraction) for s in range(start, start + n)]
  return sd.adherence([c["video"] for c in clips], [c["spec"] for c in clips])


@pytest.mark.parametrize("T, H, W, n", [(17, 32, 32, 120), (17, 32, 48, 50), (17, 48, 32, 50), (1, 32, 32, 60),
                                        (1, 48, 32, 30)])
def test_ground_truth_single_objects_match(T, H, W, n):
  summary = _match_rate(n, T, H, W, 0.0)
  assert summary["match"] >= 0.95, summary
  assert summary["n"] == n and summary["count"] == 1.0


def test_ground_truth_two_objects_mostly_match():
  summary = _match_rate(80, 17, 32, 32, 1.0, start=1000)
  assert summary["match"] >= 0.9, summary  # occlusion costs a few per cent


def test_match_split_by_object_count():
  """'match_one_object' / 'match_two_objects' are the match rates over those clips alone:
  blanking the two-object clips zeroes that rate and leaves the single-object one."""
  clips = [sw.generate_clip(s, 17, 32, 32, 0.5) for s in range(2000, 2024)]
  specs = [c["spec"] for c in clips]
  two = [len(s["objects"]) == 2 for s in specs]
  assert 0 < sum(two) < len(two)
  videos = [np.zeros_like(c["video"]) if t else c["video"] for c, t in zip(clips, two)]
  summary = sd.adherence(videos, specs)
  assert summary["n_two_objects"] == sum(two) and summary["n_one_object"] == len(two) - sum(two)
  assert summary["match_two_objects"] == 0.0 and summary["match_one_object"] >= 0.9
  assert summary["match"] == pytest.approx(summary["match_one_object"] * summary["n_one_object"] / len(two))
  # Per check and object count: a blank clip finds no object, so it fails the count (and
  # names nothing else); the single-object clips pass their checks.
  assert summary["checks_two_objects"]["count"] == 0.0
  assert all(v is None or v >= 0.9 for v in summary["checks_one_object"].values())
  # Each check's overall rate is the two splits' rates weighted by the clips naming it.
  scores = [sd.score(v, s) for v, s in zip(videos, specs)]
  for key in sd.CHECKS:
    named = {k: sum(sc[key] is not None for sc, t in zip(scores, two) if t == (k == 2))
             for k in (1, 2)}
    if not named[1] + named[2]:
      continue
    mix = sum(named[k] * (summary[f"checks_{n}"][key] or 0.0)
              for k, n in ((1, "one_object"), (2, "two_objects"))) / (named[1] + named[2])
    assert summary[key] == pytest.approx(mix), key
  only_one = sd.adherence([c["video"] for c, t in zip(clips, two) if not t],
                          [s for s, t in zip(specs, two) if not t])
  assert only_one["match_two_objects"] is None and only_one["n_two_objects"] == 0


def _box_blur(video_THWC):
  x = np.pad(video_THWC.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  H, W = video_THWC.shape[1:3]
  out = sum(x[:, dy:dy + H, dx:dx + W] for dy in range(3) for dx in range(3)) / 9
  return np.clip(out, 0, 255).astype(np.uint8)


def test_soft_and_grainy_ground_truth_still_matches():
  """Model samples are never pixel-exact: a 3x3 blur plus grain must not fail ground truth."""
  rng = np.random.default_rng(0)
  clips = [sw.generate_clip(s, 17, 32, 32, 0.0) for s in range(60)]
  soft = [np.clip(_box_blur(c["video"]) + rng.normal(0, 8, c["video"].shape), 0, 255).astype(np.uint8)
          for c in clips]
  assert sd.adherence(soft, [c["spec"] for c in clips])["match"] >= 0.95


def test_uniform_noise_scores_nothing():
  rng = np.random.default_rng(0)
  specs = [sw.generate_clip(s, 17, 32, 32)["spec"] for s in range(40)]
  noise = [rng.integers(0, 256, (17, 32, 32, 3), dtype=np.uint8) for _ in specs]
  assert sd.adherence(noise, specs)["match"] <= 0.02


def test_blank_clip_has_no_objects():
  assert sd.detect(np.zeros((17, 32, 32, 3), np.uint8)) == []
  assert sd.detect(np.full((1, 32, 32, 3), 90, np.uint8)) == []


def _one(seed=0, motion=None, T=17):
  for s in range(seed, seed + 500):
    clip = sw.generate_clip(s, T, 32, 32, 0.0)
    if motion is None or clip["spec"]["objects"][0]["motion"] == motion:
      assert sd.score(clip["video"], clip["spec"])["match"]
      return clip
  raise AssertionError(motion)


def test_vanishing_object_breaks_permanence():
  clip = _one(motion="right")
  video = clip["video"].copy()
  video[5:8] = sw.BACKGROUNDS[clip["spec"]["background"]]
  r = sd.score(video, clip["spec"])
  assert r["permanence"] is False and r["match"] is False


def test_colour_change_midway_fails():
  clip = _one(motion="left")
  o = clip["spec"]["objects"][0]
  other = next(c for c in sw.COLORS if c != o["color"])
  video = clip["video"].copy()
  video[9:][(video[9:] == sw.COLORS[o["color"]]).all(-1)] = sw.COLORS[other]
  assert sd.score(video, clip["spec"])["match"] is False


def test_frozen_video_fails_motion_but_keeps_appearance():
  clip = _one(motion="falling")
  frozen = np.repeat(clip["video"][:1], 17, axis=0)
  r = sd.score(frozen, clip["spec"])
  assert r["motion"] is False and r["match"] is False
  assert r["color"] and r["shape"] and r["size"] and r["permanence"]


def test_time_reversed_directional_motion_fails():
  clip = _one(motion="up")
  r = sd.score(clip["video"][::-1], clip["spec"])
  assert r["objects"][0]["motion"] == "down" and r["match"] is False


def test_extra_object_fails_count_but_specks_are_ignored():
  clip = _one(motion="still")
  o = clip["spec"]["objects"][0]
  extra = next(c for c in sw.COLORS if c != o["color"])
  speck = clip["video"].copy()
  y, x = (0, 27) if o["position"] != "top right" else (27, 27)
  speck[:, y:y + 2, x:x + 2] = sw.COLORS[extra]  # 4 pixels
  thin = clip["video"].copy()
  thin[:, y, x - 4:x + 5] = sw.COLORS[extra]  # a one-pixel line: a seam, not an object
  assert sd.score(speck, clip["spec"])["match"] and sd.score(thin, clip["spec"])["match"]
  big = clip["video"].copy()
  big[:, y:y + 5, x:x + 5] = sw.COLORS[extra]  # a 5x5 block: another object
  r = sd.score(big, clip["spec"])
  assert r["count"] is False and r["match"] is False


def test_wrong_attributes_are_reported_one_by_one():
  clip = _one(motion="bouncing")
  o = clip["spec"]["objects"][0]
  for key, values in (("color", sw.COLORS), ("shape", sw.SHAPES), ("size", sw.SIZES), ("motion", sw.MOTIONS)):
    wrong = next(v for v in values if v != o[key])
    r = sd.score(clip["video"], {"objects": [o | {key: wrong}]})
    assert r[key] is False and r["match"] is False
    assert all(r[k] for k in ("color", "shape", "size", "motion", "permanence") if k != key)


def test_score_counts_only_named_attributes_and_takes_json():
  clip = _one(motion="down")
  o = clip["spec"]["objects"][0]
  r = sd.score(clip["video"], sw.parse_prompt(f"a {o['color']} thing"))
  assert r["match"] and r["shape"] is None and r["motion"] is None
  assert sd.score(clip["video"], json.dumps(clip["spec"]))["match"]
  assert sd.score(clip["video"], clip["spec"])["background"] is True


def _flood_fill(color):
  """Reference 4-connected labelling of same-colour pixels within each frame."""
  ref = np.full(color.shape, -1)
  for n, start in enumerate(zip(*np.nonzero(color >= 0))):
    if ref[start] >= 0:
      continue
    ref[start], stack = n, [start]
    while stack:
      t, y, x = stack.pop()
      for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        nb = (t, y + dy, x + dx)
        if (0 <= nb[1] < color.shape[1] and 0 <= nb[2] < color.shape[2] and ref[nb] < 0
            and color[nb] == color[t, y, x]):
          ref[nb] = n
          stack.append(nb)
  return ref


def test_labelling_matches_a_flood_fill():
  rng = np.random.default_rng(1)
  shape = (3, 12, 14)
  color = np.where(rng.random(shape) < 0.6, rng.integers(0, 2, shape), -1).astype(np.int8)
  comp, ref = sd.label_components(color), _flood_fill(color)
  assert ((comp < 0) == (ref < 0)).all()
  pairs = np.unique(np.stack([comp[ref >= 0], ref[ref >= 0]]), axis=1)
  # Same partition: each label of one labelling meets exactly one label of the other.
  assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_bad_video_is_a_clear_error():
  with pytest.raises(ValueError, match=r"video\[None\]"):
    sd.detect(np.zeros((32, 32, 3), np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    sd.detect(np.zeros((1, 32, 32, 3), np.float32))
