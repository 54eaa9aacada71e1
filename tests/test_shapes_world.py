"""ShapesWorld clips are deterministic, follow specs/shapes_world.md, and their prompts vary
in wording yet parse back to their specs."""
import json
import re

import numpy as np
import pytest

from sora_jax.data import shapes_world as sw

SIZES_THW = [(17, 32, 32), (17, 32, 48), (17, 48, 32), (1, 32, 32), (5, 16, 16), (9, 24, 40)]


def _box_centres(video_THWC, rgb):
  """(T, 2) centre of the bounding box of the pixels of colour `rgb` in each frame."""
  out = []
  for frame in video_THWC:
    ys, xs = np.nonzero((frame == rgb).all(-1))
    out.append(((ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2))
  return np.array(out)


def test_same_seed_same_bytes_different_seed_different_clip():
  a, b = sw.generate_clip(7, 17, 32, 32), sw.generate_clip(7, 17, 32, 32)
  assert a["video"].tobytes() == b["video"].tobytes()
  assert (a["prompt"], a["caption"], a["spec"]) == (b["prompt"], b["caption"], b["spec"])
  videos = {sw.generate_clip(s, 17, 32, 32)["video"].tobytes() for s in range(20)}
  assert len(videos) == 20


@pytest.mark.parametrize("T, H, W", SIZES_THW)
def test_clip_layout_and_spec_words(T, H, W):
  for seed in range(25):
    clip = sw.generate_clip(seed, T, H, W)
    video, spec = clip["video"], clip["spec"]
    assert video.shape == (T, H, W, 3) and video.dtype == np.uint8
    json.dumps(spec)  # the data builder stores the spec as JSON
    assert spec["background"] in sw.BACKGROUNDS
    objects = spec["objects"]
    assert 1 <= len(objects) <= 2
    assert len({o["color"] for o in objects}) == len(objects)
    for o in objects:
      assert o["color"] in sw.COLORS and o["shape"] in sw.SHAPES and o["size"] in sw.SIZES
      assert o["motion"] in sw.MOTIONS
      assert ("position" in o) == (o["motion"] == "still")
      assert "position" not in o or o["position"] in sw.POSITIONS
      if T == 1:
        assert o["motion"] == "still"
    # Flat colours, no anti-aliasing: every pixel is the background or an object colour.
    allowed = np.array([sw.BACKGROUNDS[spec["background"]]] + [sw.COLORS[o["color"]] for o in objects])
    assert (video.reshape(-1, 1, 3) == allowed[None]).all(-1).any(-1).all()
    assert isinstance(clip["prompt"], str) and isinstance(clip["caption"], str)


def test_two_object_fraction_controls_object_count():
  counts = [len(sw.generate_clip(s, 17, 32, 32, f)["spec"]["objects"]) for f in (0.0, 1.0) for s in range(15)]
  assert counts == [1] * 15 + [2] * 15
  half = [len(sw.generate_clip(s, 17, 32, 32)["spec"]["objects"]) for s in range(200)]
  assert 0.35 < np.mean(np.array(half) == 2) < 0.65


def test_single_objects_stay_whole_inside_the_frame_with_their_size():
  for seed in range(60):
    for T, H, W in ((17, 32, 32), (17, 32, 48), (33, 48, 32)):
      clip = sw.generate_clip(seed, T, H, W, two_object_fraction=0.0)
      o = clip["spec"]["objects"][0]
      mask = sw.shape_mask(o["shape"], sw.object_side(o["size"], H, W))
      area = (clip["video"] == sw.COLORS[o["color"]]).all(-1).sum((1, 2))
      assert (area == mask.sum()).all(), (seed, o)  # never clipped by a border
      assert abs(max(mask.shape) / min(H, W) - sw.SIZE_FRACTIONS[o["size"]]) < 0.04


def test_motions_follow_the_spec():
  T, H, W = 17, 32, 32
  seen = set()
  for seed in range(300):
    clip = sw.generate_clip(seed, T, H, W, two_object_fraction=0.0)
    o = clip["spec"]["objects"][0]
    c = _box_centres(clip["video"], sw.COLORS[o["color"]])
    half = np.array(sw.shape_mask(o["shape"], sw.object_side(o["size"], H, W)).shape) / 2
    step = np.diff(c, axis=0)
    seen.add(o["motion"])
    if o["motion"] in ("left", "right", "up", "down"):
      axis = 0 if o["motion"] in ("up", "down") else 1
      sign = 1 if o["motion"] in ("down", "right") else -1
      speed = sign * (c[-1, axis] - c[0, axis]) / (T - 1) / (H, W)[axis]
      assert 0.022 <= speed <= 0.042, (seed, speed)  # 0.025-0.04, plus rounding
      assert np.abs(c[:, 1 - axis] - c[0, 1 - axis]).max() == 0
      assert (sign * step[:, axis] >= 0).all()
    elif o["motion"] == "still":
      assert (step == 0).all()
      assert sw.position_word(c[0, 0], c[0, 1], H, W) == o["position"]
    elif o["motion"] == "falling":
      assert c[0, 0] <= H / 2  # starts in the upper half
      assert step[0, 0] <= 1  # from rest
      assert (step[:, 1] == 0).all()
      first_up = np.flatnonzero(step[:, 0] < 0)
      assert first_up.size, seed  # reaches the floor and bounces within 17 frames
      floor = c[first_up[0], 0]
      # Near the floor at the frame closest to the contact (frames sample a fast object).
      assert floor + half[0] >= H - 2.5
      # Losing 30-50 % of the speed keeps 25-49 % of the height (plus rounding).
      assert (floor - c[first_up[0]:, 0].min()) / (floor - c[0, 0]) <= 0.6
    elif o["motion"] == "bouncing":
      assert (step != 0).any(0).all()  # diagonal
      turns = [axis for axis in (0, 1) if (step[:, axis] > 0).any() and (step[:, axis] < 0).any()]
      assert turns, seed
      for axis in turns:  # it turns where its box touches a wall
        far = c[:, axis].max() + half[axis] >= (H, W)[axis] - 1
        near = c[:, axis].min() - half[axis] <= 1
        assert far or near, seed
  assert seen == set(sw.MOTIONS)


def test_prompts_name_every_attribute_and_vary():
  templates = set()
  for seed in range(80):
    clip = sw.generate_clip(seed, 17, 32, 32)
    prompt = clip["prompt"]
    for o in clip["spec"]["objects"]:
      assert o["color"] in prompt and o["shape"] in prompt
    caption = clip["caption"].lower()
    assert clip["spec"]["background"] in caption
    for o in clip["spec"]["objects"]:
      assert f"{o['size']} {o['color']} {o['shape']}" in caption
    words = "|".join(list(sw.COLORS) + list(sw.SHAPES))
    templates.add(re.sub(rf"\b({words})\b", "X", prompt))
  assert len(templates) > 60  # many wordings, not one template
  motion_words = " ".join(sw.generate_clip(s, 17, 32, 32)["prompt"] for s in range(300))
  for synonym in ("moving", "sliding", "travelling", "falling", "dropping", "resting", "still"):
    assert synonym in motion_words


@pytest.mark.parametrize("T", [17, 1])
def test_parse_prompt_round_trips_generated_prompts(T):
  for seed in range(400):
    clip = sw.generate_clip(seed, T, 32, 32)
    parsed, spec = sw.parse_prompt(clip["prompt"]), clip["spec"]
    assert len(parsed["objects"]) == len(spec["objects"]), clip["prompt"]
    for got, want in zip(parsed["objects"], spec["objects"]):
      named = {"color", "shape", "size", "position"} & set(want) | ({"motion"} if T > 1 else set())
      assert named <= set(got), (clip["prompt"], got)
      assert all(got[k] == want[k] for k in got), (clip["prompt"], got, want)
    assert parsed.get("background", spec["background"]) == spec["background"]


@pytest.mark.parametrize("T", [17, 1])
def test_captions_parse_back_to_their_spec(T):
  for seed in range(150):
    clip = sw.generate_clip(seed, T, 32, 32)
    parsed, spec = sw.parse_prompt(clip["caption"]), clip["spec"]
    assert parsed["background"] == spec["background"], clip["caption"]
    assert len(parsed["objects"]) == len(spec["objects"]), clip["caption"]
    for got, want in zip(parsed["objects"], spec["objects"]):
      keys = ("color", "shape", "size") + (("motion",) if T > 1 else ())
      assert all(got.get(k) == want[k] for k in keys), (clip["caption"], got)


def test_bound_prompts_move_one_attribute_to_the_other_object():
  """The binding probe's prompts: the parser (independent of the generator) reads each
  swapped prompt as the spec with that attribute exchanged, and every prompt holds the
  same words as the right one."""
  seen = set()
  for seed in range(300):
    spec = sw.generate_clip(seed, 17, 32, 32)["spec"]
    if len(spec["objects"]) != 2:
      continue
    bound = sw.bound_prompts(spec, seed)
    assert bound["right"][1] == spec
    o0, o1 = spec["objects"]
    assert set(bound) - {"right", "motion_other", "order"} == {
        a for a in sw.BINDING_ATTRIBUTES if o0[a] != o1[a]}
    assert bound["order"][1]["objects"] == [o1, o0]
    for name, (prompt, want) in bound.items():
      seen.add(name)
      parsed = sw.parse_prompt(prompt)["objects"]
      assert len(parsed) == 2, prompt
      for got, w in zip(parsed, want["objects"]):
        for k in ("color", "shape", "size", "motion", "position"):
          assert got.get(k) == w.get(k), (name, prompt, got, w)
      if name == "motion_other":
        assert all(o["motion"] not in {o0["motion"], o1["motion"], "still"} for o in want["objects"])
        continue
      assert sorted(prompt.replace(",", " ").split()) == sorted(
          bound["right"][0].replace(",", " ").split()), (name, prompt)
    if "motion" in bound and o0["motion"] != "still" and o1["motion"] != "still":
      assert bound["motion"][1]["objects"][0]["motion"] == o1["motion"]
  assert seen == {"right", "motion_other", "order", *sw.BINDING_ATTRIBUTES}
  with pytest.raises(ValueError, match="two-object"):
    sw.bound_prompts(sw.generate_clip(0, 17, 32, 32, two_object_fraction=0.0)["spec"], 0)


def test_swap_caption_objects_gives_each_trajectory_to_the_other_object():
  checked = 0
  for seed in range(200):
    clip = sw.generate_clip(seed, 17, 32, 32)
    spec = clip["spec"]
    if len(spec["objects"]) != 2:
      continue
    swapped = sw.swap_caption_objects(clip["caption"], spec)
    parsed = sw.parse_prompt(swapped)["objects"]
    assert len(parsed) == 2, swapped
    for k, got in enumerate(parsed):
      other, same = spec["objects"][1 - k], spec["objects"][k]
      assert all(got[a] == other[a] for a in ("color", "shape", "size")), (swapped, got)
      assert got["motion"] == same["motion"], (swapped, got)
    checked += 1
  assert checked > 50
  with pytest.raises(ValueError, match="two-object"):
    sw.swap_caption_objects("A small red circle.", {"objects": [{}]})


def test_parse_prompt_free_text():
  assert sw.parse_prompt("A huge purple ball rests in the top-left corner while a grey-ish thing waits") == {
      "objects": [{"color": "magenta", "shape": "circle", "size": "large", "motion": "still",
                   "position": "top left"}]}
  assert sw.parse_prompt("a blue box drops onto a grey background") == {
      "background": "gray", "objects": [{"color": "blue", "shape": "square", "motion": "falling"}]}
  assert sw.parse_prompt("a white triangle gliding left on a black background, and a tiny red circle") == {
      "background": "black", "objects": [{"color": "white", "shape": "triangle", "motion": "left"},
                                         {"color": "red", "shape": "circle", "size": "small"}]}
  assert sw.parse_prompt("nothing at all") == {"objects": []}


def test_validation_specs_are_reproducible_held_out_ground_truth():
  pairs = sw.validation_specs(6, seed=3, num_frames=17, height=32, width=32)
  assert pairs == sw.validation_specs(6, seed=3, num_frames=17, height=32, width=32)
  for i, (prompt, spec) in enumerate(pairs):
    clip = sw.generate_clip(sw.validation_seed(3, i), 17, 32, 32)
    assert (clip["prompt"], clip["spec"]) == (prompt, spec)
  train_prompts = {sw.generate_clip(s, 17, 32, 32)["prompt"] for s in range(200)}
  assert sw.validation_seed(0, 0) > 10 ** 9 and not {p for p, _ in pairs} & train_prompts


@pytest.mark.parametrize("kwargs, expect", [
    (dict(seed=-1), "seed"), (dict(num_frames=0), "num_frames"), (dict(height=8), "height"),
    (dict(width=15), "width"), (dict(two_object_fraction=1.5), "two_object_fraction")])
def test_bad_arguments_name_the_fix(kwargs, expect):
  args = dict(seed=0, num_frames=17, height=32, width=32) | kwargs
  with pytest.raises(ValueError, match=expect):
    sw.generate_clip(**args)
