"""ShapesWorld v1: procedural captioned videos of flat shapes (`docs/specs/shapes_world.md`).

Pure numpy, deterministic from a seed. `generate_clip` renders one clip with its short
`prompt`, detailed `caption` and complete `spec`; `parse_prompt` turns any prompt into the
spec of the attributes it names, so `sora_jax/eval/shapes_detector.py` can score free
prompts; `validation_specs` lists the held-out prompts an evaluation scores.

Geometry: objects are stamped from fixed pixel masks (`shape_mask`) at integer top-left
positions rounded from a continuous trajectory, so an unoccluded object keeps exactly the
same pixels in every frame and an evaluator can demand a steady area.
"""
from __future__ import annotations

import functools
import math
import re

import numpy as np

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "magenta": (210, 50, 210),
    "cyan": (40, 200, 210),
    "white": (235, 235, 235),
    "orange": (240, 130, 30),
}
BACKGROUNDS = {"black": (0, 0, 0), "gray": (90, 90, 90)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
MOTIONS = ("left", "right", "up", "down", "bouncing", "falling", "still")
POSITIONS = ("center", "top left", "top right", "bottom left", "bottom right")

# Bounding-box side over min(H, W).
SIZE_FRACTIONS = {"small": 0.22, "large": 0.38}
# Directional speed, and bouncing speed per axis, in frame sides per frame.
SPEED_RANGE = (0.025, 0.04)
# Gravity in frame heights per frame^2: a fall from the top of a 32-pixel frame reaches
# the floor within about 12 frames, so a 17-frame clip shows the fall and the rebound.
GRAVITY_RANGE = (0.012, 0.018)
# Share of its speed an object keeps at a floor bounce (it loses 30-50 %).
RESTITUTION_RANGE = (0.5, 0.7)
MIN_SIDE = 16
# A bouncing object's first wall contact falls in this share of the clip, so that the
# reflection is visible with motion on both sides of it.
_BOUNCE_WINDOW = (0.3, 0.7)
# ... and, where the clip is long enough, this share of the side is travelled before and
# after that contact (the evaluator asks for 0.08).
_BOUNCE_TRAVEL = 0.12
# Two-object clips: resample positions while the back object keeps less than this share
# of its pixels in some frame (a hidden object cannot match its prompt).
_MIN_VISIBLE = 0.75
_PLACEMENT_TRIES = 24
# Least move (frame sides) of a moving object over a clip, when SPEED_RANGE allows: 1.5x
# the evaluator's still threshold, so 5-frame clips still show their motion.
_MIN_TRAVEL = 0.15


# ---------------------------------------------------------------- geometry

def object_side(size: str, height: int, width: int) -> int:
  """Pixel side of the bounding box of a `size` object in an H x W frame."""
  return max(3, int(round(SIZE_FRACTIONS[size] * min(height, width))))


@functools.lru_cache(maxsize=None)
def shape_mask(shape: str, side: int) -> np.ndarray:
  """Boolean (h, w) mask of `shape` in a side x side box, trimmed to its pixels.

  A pixel belongs to the shape when its centre lies inside it (no anti-aliasing). The
  triangle is isosceles, apex up, base = height; for an even side its apex row holds no
  pixel centre, so the trimmed mask is one row shorter.
  """
  c = np.arange(side) + 0.5
  y, x = np.meshgrid(c, c, indexing="ij")
  half = side / 2
  if shape == "circle":
    m = (x - half) ** 2 + (y - half) ** 2 <= half * half + 1e-9
  elif shape == "square":
    m = np.ones((side, side), bool)
  elif shape == "triangle":
    m = np.abs(x - half) <= y / 2 + 1e-9
  else:
    raise ValueError(f"shape={shape!r}: use one of {SHAPES}")
  rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
  m = m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
  m.setflags(write=False)
  return m


def position_word(center_y: float, center_x: float, height: int, width: int) -> str:
  """Position word of a point: `center` inside the middle third on both axes, else the
  quadrant it lies in."""
  if height / 3 <= center_y <= 2 * height / 3 and width / 3 <= center_x <= 2 * width / 3:
    return "center"
  return ("top " if center_y < height / 2 else "bottom ") + ("left" if center_x < width / 2 else "right")


def _round(p: np.ndarray, room: float) -> np.ndarray:
  return np.clip(np.floor(np.asarray(p) + 0.5), 0, room).astype(np.int64)


def _reflect(u: np.ndarray, room: float) -> np.ndarray:
  """Folds an unbounded coordinate into [0, room] as a ball reflecting off both walls."""
  m = np.mod(u, 2 * room)
  return np.where(m <= room, m, 2 * room - m)


def _place_in(rng, word: str, length: int, extent: int) -> int:
  """Top-left coordinate on one axis whose object centre lies in `word`'s region:
  'low' third, 'mid' third, or 'high' third (half a pixel inside each boundary)."""
  half = extent / 2
  lo, hi = {"low": (half, length / 3 - 0.5), "mid": (length / 3 + 0.5, 2 * length / 3 - 0.5),
            "high": (2 * length / 3 + 0.5, length - half)}[word]
  first, last = math.ceil(lo - half), math.floor(hi - half)
  first, last = max(first, 0), min(last, length - extent)
  if first > last:  # region narrower than a pixel step: nearest valid placement
    return int(np.clip(round((lo + hi) / 2 - half), 0, length - extent))
  return int(rng.integers(first, last + 1))


def _still_track(rng, position: str, T, H, W, h, w):
  if position == "center":
    ay, ax = "mid", "mid"
  else:
    vert, horiz = position.split()
    ay = "low" if vert == "top" else "high"
    ax = "low" if horiz == "left" else "high"
  top, left = _place_in(rng, ay, H, h), _place_in(rng, ax, W, w)
  return np.full(T, top, np.int64), np.full(T, left, np.int64), {}


def _min_speed(T: int) -> float:
  """Lowest speed (sides per frame) drawn for a T-frame clip: short clips draw from the
  top of SPEED_RANGE so the whole move still spans _MIN_TRAVEL of the side."""
  if T < 2:
    return SPEED_RANGE[0]
  return float(np.clip(_MIN_TRAVEL / (T - 1), *SPEED_RANGE))


def _directional_track(rng, motion: str, T, H, W, h, w):
  axis, sign = {"up": (0, -1), "down": (0, 1), "left": (1, -1), "right": (1, 1)}[motion]
  sides, rooms = (H, W), (H - h, W - w)
  room = rooms[axis]
  speed = rng.uniform(_min_speed(T), SPEED_RANGE[1]) * sides[axis]
  if T > 1:  # long clips: slow down rather than leave the frame
    speed = min(speed, room / (T - 1))
  travel = speed * (T - 1)
  start = rng.uniform(0, room - travel)
  t = np.arange(T)
  along = start + speed * t if sign > 0 else room - start - speed * t
  across = np.full(T, rng.uniform(0, rooms[1 - axis]))
  tracks = [None, None]
  tracks[axis], tracks[1 - axis] = _round(along, room), _round(across, rooms[1 - axis])
  edge = {"left": "right", "right": "left", "up": "bottom", "down": "top"}[motion]
  return tracks[0], tracks[1], {"start_edge": edge}


def _bouncing_track(rng, T, H, W, h, w):
  rooms = np.array([H - h, W - w], float)
  velocity = rng.uniform(_min_speed(T), SPEED_RANGE[1], size=2) * np.array([H, W]) * rng.choice([-1.0, 1.0], size=2)
  start = rng.uniform(0, 1, size=2) * rooms
  if T > 2:  # put one wall contact mid-clip so the reflection is seen
    axis = int(rng.integers(2))
    speed = abs(velocity[axis])
    margin = _BOUNCE_TRAVEL * (H, W)[axis] / speed
    lo, hi = max(_BOUNCE_WINDOW[0] * (T - 1), margin), min(_BOUNCE_WINDOW[1] * (T - 1), T - 1 - margin)
    if lo > hi:  # too short a clip for both: contact at mid-clip
      lo = hi = (T - 1) / 2
    hi = min(hi, rooms[axis] / speed)
    if lo <= hi:
      contact = rng.uniform(lo, hi)
      start[axis] = rooms[axis] - speed * contact if velocity[axis] > 0 else speed * contact
  t = np.arange(T)[:, None]
  pos = _reflect(start + velocity * t, rooms)
  return _round(pos[:, 0], rooms[0]), _round(pos[:, 1], rooms[1]), {}


def _falling_track(rng, T, H, W, h, w):
  room = H - h
  left = rng.uniform(0, W - w)
  y = rng.uniform(0, max(0.0, H / 2 - h / 2))
  g = rng.uniform(*GRAVITY_RANGE) * H
  keep = rng.uniform(*RESTITUTION_RANGE)
  ys, v, resting, first_contact = [y], 0.0, False, None
  for frame in range(1, T):
    dt = 1.0
    while dt > 0 and not resting:  # exact parabola pieces between floor contacts
      to_floor = (-v + math.sqrt(v * v + 2 * g * max(room - y, 0.0))) / g
      if to_floor >= dt:
        y, v, dt = y + v * dt + 0.5 * g * dt * dt, v + g * dt, 0.0
      else:
        dt -= to_floor
        v, y = -keep * (v + g * to_floor), float(room)
        first_contact = frame - dt if first_contact is None else first_contact
        resting = abs(v) < 0.01 * g  # the bounces have died out
    ys.append(room if resting else y)
  return _round(ys, room), np.full(T, _round(left, W - w)), {"floor_contact": first_contact}


def _track(rng, motion, position, T, H, W, mask):
  h, w = mask.shape
  if motion == "still":
    return _still_track(rng, position, T, H, W, h, w)
  if motion == "bouncing":
    return _bouncing_track(rng, T, H, W, h, w)
  if motion == "falling":
    return _falling_track(rng, T, H, W, h, w)
  return _directional_track(rng, motion, T, H, W, h, w)


def _render_ids(tracks, masks, T, H, W) -> np.ndarray:
  """(T, H, W) int8 map of the object drawn at each pixel (-1: background)."""
  ids = np.full((T, H, W), -1, np.int8)
  for k, ((top, left, _), mask) in enumerate(zip(tracks, masks)):
    h, w = mask.shape
    for t in range(T):
      ids[t, top[t]:top[t] + h, left[t]:left[t] + w][mask] = k
  return ids


# ---------------------------------------------------------------- words

_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
_DIRECTION_WORDS = {
    "left": ("left", "to the left", "leftward", "leftwards"),
    "right": ("right", "to the right", "rightward", "rightwards"),
    "up": ("up", "upward", "upwards"),
    "down": ("down", "downward", "downwards"),
}
_VERBS = (("moving", "moves"), ("sliding", "slides"), ("travelling", "travels"),
          ("traveling", "travels"), ("drifting", "drifts"), ("gliding", "glides"))
_RISE = ("rising", "rises")  # (participle, finite): "up" said without a direction word
_MOTION_WORDS = {  # (participle phrases, finite phrases)
    "bouncing": (("bouncing", "bouncing around", "bouncing off the walls", "bouncing around the frame"),
                 ("bounces", "bounces around", "bounces off the walls")),
    "falling": (("falling", "dropping", "falling down", "dropping to the floor", "falling to the ground"),
                ("falls", "drops", "falls down", "drops to the floor")),
    "still": (("staying still", "resting", "sitting still", "standing still", "not moving", "motionless"),
              ("stays still", "rests", "sits still", "does not move", "stands still")),
}
_POSITION_WORDS = {
    "center": ("in the center", "in the centre", "in the middle", "at the center"),
    "top left": ("in the top left", "in the top-left corner", "at the top left", "in the upper left"),
    "top right": ("in the top right", "in the top-right corner", "at the top right", "in the upper right"),
    "bottom left": ("in the bottom left", "in the bottom-left corner", "at the bottom left",
                    "in the lower left"),
    "bottom right": ("in the bottom right", "in the bottom-right corner", "at the bottom right",
                     "in the lower right"),
}
_BACKGROUND_WORDS = {"black": ("black",), "gray": ("gray", "grey")}


def _pick(rng, options):
  return options[int(rng.integers(len(options)))]


def _motion_phrase(rng, motion: str, finite: bool) -> str:
  if motion in _MOTION_WORDS:
    return _pick(rng, _MOTION_WORDS[motion][finite])
  if motion == "up" and rng.random() < 0.2:
    return _RISE[finite]
  verb = _pick(rng, _VERBS)[finite]
  return f"{verb} {_pick(rng, _DIRECTION_WORDS[motion])}"


def _object_phrase(rng, obj: dict, finite: bool, name_motion: bool) -> str:
  words = [_pick(rng, _SIZE_WORDS[obj["size"]]), obj["color"], obj["shape"]]
  if name_motion:
    words.append(("that " if finite and rng.random() < 0.5 else "") + _motion_phrase(rng, obj["motion"], finite))
  if "position" in obj:
    words.append(_pick(rng, _POSITION_WORDS[obj["position"]]))
  return " ".join(words)


def _make_prompt(rng, spec: dict, is_image: bool) -> str:
  objects = spec["objects"]
  name_motion = not is_image or rng.random() < 0.5  # an image prompt may leave out "still"
  finite = name_motion and rng.random() < 0.4
  phrases = []
  for obj in objects:
    determiner = _pick(rng, ("a ", "a ", "one ", ""))
    phrases.append(determiner + _object_phrase(rng, obj, finite, name_motion))
  if len(phrases) == 1:
    text = phrases[0]
  else:
    joins = (" and ", " while ", ", and ", " as ") if finite else (" and ", ", ", " with ", ", and ")
    text = phrases[0] + _pick(rng, joins) + phrases[1]
  if rng.random() < 0.3:
    link = _pick(rng, (" on a ", " against a ", " over a ", ", "))
    text += f"{link}{_pick(rng, _BACKGROUND_WORDS[spec['background']])} background"
  return text


# Attributes whose words `bound_prompts` can exchange between a prompt's two objects
# ('motion' carries a still object's position words with it).
BINDING_ATTRIBUTES = ("color", "shape", "size", "motion")


def bound_prompts(spec: dict, seed: int) -> dict[str, tuple[str, dict]]:
  """A video prompt of a two-object `spec` and the same prompt with one attribute's words
  exchanged between its two objects: {'right': (prompt, spec), attr: (prompt, swapped
  spec)} for each attr of BINDING_ATTRIBUTES whose values the two objects differ in,
  'motion_other': both objects' motions replaced by two moving ones neither has, and
  'order': the two objects' phrases, each still right, named in the other order (prompts
  name objects in drawing order, the later one on top; its spec lists them so).

  The swapped prompts hold the very same words as the right one, only bound to the other
  object ("a red circle moving left and a blue square falling" -> "a blue circle moving
  left and a red square falling" for 'color'), so a model that scores its clip no worse
  with them does not bind that attribute to its object. Words are drawn from `seed`."""
  objects = spec["objects"]
  if len(objects) != 2:
    raise ValueError(f"bound_prompts needs a two-object spec, got {len(objects)} objects")
  rng = np.random.default_rng(int(seed))
  finite = rng.random() < 0.4
  parts = []
  for obj in objects:
    motion = ("that " if finite and rng.random() < 0.5 else "") + _motion_phrase(rng, obj["motion"], finite)
    if "position" in obj:
      motion += " " + _pick(rng, _POSITION_WORDS[obj["position"]])
    parts.append({"det": _pick(rng, ("a ", "a ", "one ", "")), "size": _pick(rng, _SIZE_WORDS[obj["size"]]),
                  "color": obj["color"], "shape": obj["shape"], "motion": motion})
  join = _pick(rng, (" and ", " while ", ", and ", " as ") if finite else (" and ", ", ", " with ", ", and "))

  def text(ps):
    return join.join(p["det"] + " ".join(p[k] for k in ("size", "color", "shape", "motion")) for p in ps)

  out = {"right": (text(parts), spec)}
  # Control: both motions replaced by moving ones neither object has (a model that uses
  # motion words at all predicts the clip worse from it, bound or not).
  other_rng = np.random.default_rng([int(seed), 1])
  unused = [m for m in MOTIONS if m != "still" and m not in (objects[0]["motion"], objects[1]["motion"])]
  replaced = [m for m in other_rng.permutation(unused)[:2]]
  ps = [dict(p, motion=_motion_phrase(other_rng, m, finite)) for p, m in zip(parts, replaced)]
  others = [{k: v for k, v in o.items() if k != "position"} | {"motion": str(m)}
            for o, m in zip(objects, replaced)]
  out["motion_other"] = (text(ps), {**spec, "objects": others})
  out["order"] = (text(parts[::-1]), {**spec, "objects": objects[::-1]})
  for attr in BINDING_ATTRIBUTES:
    if objects[0][attr] == objects[1][attr]:
      continue
    keys = ("motion", "position") if attr == "motion" else (attr,)
    swapped = [dict(o) for o in objects]
    for k in keys:
      for a, b in ((0, 1), (1, 0)):
        if k in objects[b]:
          swapped[a][k] = objects[b][k]
        else:
          swapped[a].pop(k, None)
    ps = [dict(p) for p in parts]
    ps[0][attr], ps[1][attr] = parts[1][attr], parts[0][attr]
    out[attr] = (text(ps), {**spec, "objects": swapped})
  return out


# Per-token classes of data.motion_labels: each object's motion, then the background.
MOTION_CLASSES = MOTIONS + ("background",)


def motion_label_map(video_THWC: np.ndarray, spec: dict, temporal: int, spatial: int) -> np.ndarray:
  """(t, h, w, len(MOTION_CLASSES)) float32: per latent cell of a causal video VAE that
  folds `temporal` frames and `spatial` x `spatial` pixels into one cell (latent frame 0:
  frame 0 alone; latent frame i: frames (i-1)*temporal+1 .. i*temporal), the share of the
  cell's pixels that belong to an object of each motion (MOTIONS) or to the background.
  Pixels are told apart by colour (a clip's objects never share one, nor the background's),
  so `video_THWC` must be a ShapesWorld render (uint8) of `spec`; ValueError otherwise.
  What diffusion.motion_weight teaches the DiT's motion head to predict per token."""
  T, H, W, _ = video_THWC.shape
  if (T - 1) % temporal or H % spatial or W % spatial:
    raise ValueError(f"a {T}x{H}x{W} clip does not fold into cells of {temporal} frames (after "
                     f"the first) and {spatial}x{spatial} pixels")
  cls = np.full((T, H, W), -1, np.int64)
  palette = [(BACKGROUNDS[spec["background"]], MOTION_CLASSES.index("background"))]
  palette += [(COLORS[o["color"]], MOTIONS.index(o["motion"])) for o in spec["objects"]]
  for rgb, c in palette:
    cls[np.all(video_THWC == np.asarray(rgb, video_THWC.dtype), axis=-1)] = c
  if (cls < 0).any():
    raise ValueError(f"{int((cls < 0).sum())} pixels have none of the spec's colours: motion "
                     "labels need the ShapesWorld render of this very spec")
  onehot = np.eye(len(MOTION_CLASSES), dtype=np.float32)[cls]  # (T, H, W, K)
  h, w = H // spatial, W // spatial
  cells = onehot.reshape(T, h, spatial, w, spatial, -1).mean(axis=(2, 4))
  later = cells[1:].reshape((T - 1) // temporal, temporal, h, w, len(MOTION_CLASSES)).mean(axis=1)
  return np.concatenate([cells[:1], later])


def swap_caption_objects(caption: str, spec: dict) -> str:
  """A two-object clip's caption (`generate_clip`'s 'caption') with the objects' names
  ("large yellow triangle", and "the yellow triangle" where one refers to the other)
  exchanged: each object's start position and motion now belong to the other object.
  The binding probe's caption counterpart of bound_prompts(...)['motion']."""
  objects = spec["objects"]
  if len(objects) != 2:
    raise ValueError(f"swap_caption_objects needs a two-object spec, got {len(objects)} objects")
  names = [(f"{o['size']} {o['color']} {o['shape']}", f"the {o['color']} {o['shape']}")
           for o in objects]
  out = caption
  for k, (full, ref) in enumerate(names):
    if full not in out:
      raise ValueError(f"swap_caption_objects: {full!r} is not in the caption {caption!r}")
    out = out.replace(full, f"\0{k}F\0").replace(ref, f"\0{k}R\0")
  for k, (full, ref) in enumerate(names):
    out = out.replace(f"\0{1 - k}F\0", full).replace(f"\0{1 - k}R\0", ref)
  return out


# What swap_subjects exchanges between a text's two objects (data.binding_swap).
SWAPS = ("color_shape", "object", "motion")


def _motion_pattern(motion: str) -> str:
  """A regex of every phrase _motion_phrase writes for `motion` (participle or finite),
  longest first so that "falling down" is read whole."""
  if motion in _MOTION_WORDS:
    phrases = [w for forms in _MOTION_WORDS[motion] for w in forms]
  else:
    phrases = [f"{verb} {d}" for forms in _VERBS for verb in forms for d in _DIRECTION_WORDS[motion]]
    phrases += list(_RISE) if motion == "up" else []
  return "|".join(re.escape(p) for p in sorted(set(phrases), key=len, reverse=True))


def _swap_motions(text: str, objects: list[dict], names: list[str]) -> str | None:
  """swap_subjects(..., 'motion'): each object's motion phrase, right after its name (and
  an optional "that "), given to the other object; None where either object is still or a
  phrase is not found (a caption words motion with start positions: no phrase follows the
  name)."""
  if any(o["motion"] == "still" for o in objects) or objects[0]["motion"] == objects[1]["motion"]:
    return None
  spans = []
  for o, n in zip(objects, names):
    m = list(re.finditer(rf"\b{re.escape(n)} (?:that )?(?P<m>{_motion_pattern(o['motion'])})\b", text))
    if len(m) != 1:
      return None
    spans.append(m[0].span("m"))
  (a0, a1), (b0, b1) = sorted(spans)
  return text[:a0] + text[b0:b1] + text[a1:b0] + text[a0:a1] + text[b1:]


def swap_subjects(text: str, spec: dict, swap: str = "color_shape") -> str | None:
  """A clip's prompt or caption with its two objects' names exchanged, so the other words
  now describe the other object; None where that text would fit the clip too or cannot be
  made: fewer or more than two objects, the same color and shape for both, a name the
  text lacks, or objects alike in every attribute that changes hands (nothing is rebound).

  swap='color_shape' exchanges "<color> <shape>": size, motion and position change hands
  ("a small red circle falling and a large blue square moving left" -> "a small blue
  square falling and a large red circle moving left"). swap='object' takes the size word
  in front along ("small red circle" <-> "large blue square"): only motion and position
  change hands. swap='motion' leaves every name where it was and exchanges only the two
  motion phrases of a prompt in which both objects move, differently ("a small red circle
  falling and a large blue square moving left" -> "a small red circle moving left and a
  large blue square falling"): names, sizes, order of mention and (moving objects have
  none) positions stay, as in bound_prompts(...)['motion'] where both move; a caption
  gives None. The training negative of diffusion.binding_weight: the very words of the
  right text, bound to the wrong objects."""
  if swap not in SWAPS:
    raise ValueError(f"swap={swap!r} is not one of {SWAPS}")
  objects = spec.get("objects", [])
  if len(objects) != 2:
    return None
  with_size = swap == "object"
  names = [f"{o['color']} {o['shape']}" for o in objects]
  if names[0] == names[1]:
    return None
  if swap == "motion":
    return _swap_motions(text, objects, names)
  moved = ("motion", "position") if with_size else ("size", "motion", "position")
  if all(objects[0].get(k) == objects[1].get(k) for k in moved):
    return None
  sizes = ["|".join(_SIZE_WORDS[o["size"]]) for o in objects]
  # One alternative per object: its name, with its size word in front when swap='object'
  # (optional: a caption's "the red circle" has none).
  alts = [rf"(?:\b(?:{sz}) )?\b{re.escape(n)}\b" if with_size else rf"\b{re.escape(n)}\b"
          for n, sz in zip(names, sizes)]
  calls = [[m.group(0) for m in re.finditer(a, text)] for a in alts]
  if not all(calls):
    return None
  # Each object's fullest call: the first with a size word (swap='object'), else its name.
  full = [next((c for c in cs if c != n), n) for cs, n in zip(calls, names)]
  pattern = re.compile(f"(?P<a>{alts[0]})|(?P<b>{alts[1]})")

  def other(m):
    k = 0 if m.group("a") else 1
    has_size = m.group(0) != names[k]
    return full[1 - k] if has_size else names[1 - k]
  return pattern.sub(other, text)


def _start_words(top, left, mask, H, W) -> str:
  h, w = mask.shape
  return position_word(top + h / 2, left + w / 2, H, W)


def _object_sentence(rng, obj, track, mask, H, W, is_image: bool) -> str:
  top, left, info = track
  noun = f"{obj['size']} {obj['color']} {obj['shape']}"
  motion = obj["motion"]
  if is_image:
    return f"a {noun} {_pick(rng, _POSITION_WORDS[obj['position']])}"
  if motion == "still":
    rest = _pick(rng, ("rests motionless", "stays perfectly still", "sits without moving"))
    return f"a {noun} {rest} {_pick(rng, _POSITION_WORDS[obj['position']])} of the frame"
  if motion == "bouncing":
    where = _start_words(top[0], left[0], mask, H, W)
    move = _pick(rng, ("bounces diagonally around the frame, reflecting off the walls",
                       "travels diagonally at constant speed and rebounds off the walls"))
    return f"a {noun} starts in the {where} and {move}"
  if motion == "falling":
    column = position_word(H / 2, left[0] + mask.shape[1] / 2, H, W)
    column = "middle" if column == "center" else column.split()[1]
    contact = info["floor_contact"]
    if contact is not None and contact < len(top) - 1:
      after = _pick(rng, ("falls under gravity and bounces on the floor, losing speed",
                          "drops, speeding up, then rebounds off the floor with less speed"))
    else:
      after = _pick(rng, ("falls under gravity, speeding up", "drops, accelerating downward"))
    return f"a {noun} starts at rest in the upper half, on the {column}, and {after}"
  edge = info["start_edge"]
  verb = _pick(rng, ("moves steadily", "slides at a constant speed", "travels steadily"))
  toward = {"left": "to the left", "right": "to the right", "up": "upward", "down": "downward"}[motion]
  edge_word = f"{edge} edge" if edge in ("left", "right") else edge
  return f"a {noun} starts near the {edge_word} and {verb} {toward}"


def _make_caption(rng, spec, tracks, masks, ids, H, W, is_image: bool) -> str:
  background = spec["background"]
  sentences = [_object_sentence(rng, o, tr, m, H, W, is_image)
               for o, tr, m in zip(spec["objects"], tracks, masks)]
  if len(sentences) == 2:
    back, front = spec["objects"]
    back_hidden = (ids == 0).sum() < masks[0].sum() * ids.shape[0]
    if back_hidden:
      how = "partly covering" if front["motion"] == "still" else "passing in front of"
      sentences[1] += f", {how} the {back['color']} {back['shape']}"
  opener = "A still image of " if is_image else ""
  body = "; ".join(sentences) if is_image else ". ".join(s[0].upper() + s[1:] for s in sentences)
  if is_image:
    return f"{opener}{body}, on a {background} background."
  tail = _pick(rng, (f"The background is plain {background}.", f"All on a flat {background} background.",
                     f"The scene has a {background} background."))
  return f"{body}. {tail}"


# ---------------------------------------------------------------- clips

def _check_args(seed, num_frames, height, width, two_object_fraction):
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed={seed!r}: use an integer >= 0")
  if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
    raise ValueError(f"num_frames={num_frames!r}: use an integer >= 1 (1 is a still image)")
  for name, v in (("height", height), ("width", width)):
    if not isinstance(v, (int, np.integer)) or v < MIN_SIDE:
      raise ValueError(f"{name}={v!r}: use an integer >= {MIN_SIDE}")
  if not 0.0 <= two_object_fraction <= 1.0:
    raise ValueError(f"two_object_fraction={two_object_fraction!r}: use a share in [0, 1]")


def _sample_spec(rng, T: int, two_object_fraction: float) -> dict:
  background = _pick(rng, tuple(BACKGROUNDS))
  n = 2 if rng.random() < two_object_fraction else 1
  colors = rng.choice(len(COLORS), size=n, replace=False)
  positions = rng.permutation(len(POSITIONS))  # two still objects never share a position word
  objects = []
  for k in range(n):
    motion = "still" if T == 1 else _pick(rng, MOTIONS)
    obj = {"color": tuple(COLORS)[colors[k]], "shape": _pick(rng, SHAPES), "size": _pick(rng, SIZES),
           "motion": motion}
    if motion == "still":
      obj["position"] = POSITIONS[positions[k]]
    objects.append(obj)
  return {"background": background, "objects": objects}


def _place(rng, spec, T, H, W, masks):
  """Trajectories of the spec's objects; with two, the placement whose back object stays
  most visible (accepting the first that keeps _MIN_VISIBLE of it in every frame)."""
  best, best_visible = None, -1.0
  for _ in range(_PLACEMENT_TRIES):
    tracks = [_track(rng, o["motion"], o.get("position"), T, H, W, m) for o, m in zip(spec["objects"], masks)]
    if len(tracks) == 1:
      return tracks
    ids = _render_ids(tracks, masks, T, H, W)
    visible = (ids == 0).reshape(T, -1).sum(1).min() / masks[0].sum()
    if visible > best_visible:
      best, best_visible = tracks, visible
    if visible >= _MIN_VISIBLE:
      break
  return best


def generate_clip(seed: int, num_frames: int, height: int, width: int,
                  two_object_fraction: float = 0.5) -> dict:
  """One ShapesWorld clip, a pure function of its arguments.

  Returns {'video': uint8 (T, H, W, 3), 'prompt': str, 'caption': str, 'spec': dict}
  where spec = {'background': 'black'|'gray', 'objects': [{'color', 'shape', 'size',
  'motion', 'position' (still objects only)}]}, objects in drawing order (last on top).
  The prompt names every object attribute of the spec (the background sometimes); the
  caption adds start positions and the background. Any T >= 1 (T = 1: a still image, all
  objects still) and H, W >= 16. Directional objects move 0.025-0.04 of the frame side
  per frame, slower only where a long clip would otherwise carry them out of the frame.
  """
  _check_args(seed, num_frames, height, width, two_object_fraction)
  T, H, W = int(num_frames), int(height), int(width)
  rng = np.random.default_rng(int(seed))
  spec = _sample_spec(rng, T, two_object_fraction)
  masks = [shape_mask(o["shape"], object_side(o["size"], H, W)) for o in spec["objects"]]
  tracks = _place(rng, spec, T, H, W, masks)
  ids = _render_ids(tracks, masks, T, H, W)
  palette_K3 = np.array([BACKGROUNDS[spec["background"]]] + [COLORS[o["color"]] for o in spec["objects"]],
                        np.uint8)
  video_THWC = palette_K3[ids.astype(np.int64) + 1]
  prompt = _make_prompt(rng, spec, T == 1)
  caption = _make_caption(rng, spec, tracks, masks, ids, H, W, T == 1)
  return {"video": video_THWC, "prompt": prompt, "caption": caption, "spec": spec}


_VALIDATION_SEED_BASE = 10 ** 12  # far above any training seed


def validation_seed(seed: int, index: int) -> int:
  """Seed of validation clip `index` of the validation set drawn with `seed`."""
  return _VALIDATION_SEED_BASE + 1_000_003 * int(seed) + int(index)


def validation_specs(n: int, seed: int, num_frames: int, height: int, width: int,
                     two_object_fraction: float = 0.5) -> list[tuple[str, dict]]:
  """`n` held-out (prompt, spec) pairs; pair i is the prompt and spec of
  `generate_clip(validation_seed(seed, i), num_frames, height, width, two_object_fraction)`,
  which is its ground-truth clip."""
  out = []
  for i in range(n):
    clip = generate_clip(validation_seed(seed, i), num_frames, height, width, two_object_fraction)
    out.append((clip["prompt"], clip["spec"]))
  return out


# ---------------------------------------------------------------- parsing

_COLOR_LEXICON = {c: c for c in COLORS} | {
    "purple": "magenta", "pink": "magenta", "violet": "magenta",
    "teal": "cyan", "turquoise": "cyan", "aqua": "cyan"}
_SHAPE_LEXICON = {
    "circle": "circle", "circles": "circle", "ball": "circle", "balls": "circle", "disc": "circle",
    "disk": "circle", "dot": "circle", "square": "square", "squares": "square", "box": "square",
    "block": "square", "triangle": "triangle", "triangles": "triangle", "dots": "circle",
    "discs": "circle", "disks": "circle", "boxes": "square", "blocks": "square"}
_PLURAL_SHAPES = {"circles", "balls", "dots", "discs", "disks", "squares", "boxes", "blocks", "triangles"}
_SIZE_LEXICON = {"small": "small", "little": "small", "tiny": "small", "smaller": "small",
                 "large": "large", "big": "large", "huge": "large", "larger": "large", "bigger": "large"}
_DIRECTION_LEXICON = {
    "left": "left", "leftward": "left", "leftwards": "left",
    "right": "right", "rightward": "right", "rightwards": "right",
    "up": "up", "upward": "up", "upwards": "up", "rising": "up", "rises": "up", "rise": "up",
    "ascending": "up", "down": "down", "downward": "down", "downwards": "down", "descending": "down"}
_STILL_WORDS = {"still", "resting", "rests", "rest", "motionless", "stationary", "static", "immobile"}
_CONJUNCTIONS = {"and", "while", "as", "with", "plus", ",", ";", "."}
_DETERMINERS = {"a", "an", "one", "the", "another"}
# Words that may precede "background"; an object colour there names no object.
_BACKGROUND_MODIFIERS = {"black", "gray", "grey", "dark", "plain", "flat"} | set(_COLOR_LEXICON)


def _tokens(text: str) -> list[str]:
  return re.findall(r"[a-z]+|[,;.]", text.lower().replace("-", " "))


def _take_background(tokens: list[str]):
  """Finds and blanks 'X background' / 'background is X' phrases; returns the word."""
  found = None
  for i, tok in enumerate(tokens):
    if tok != "background":
      continue
    span = [i]
    for j in (i - 1, i - 2):  # "black background", "plain black background"
      if j >= 0 and tokens[j] in _BACKGROUND_MODIFIERS:
        span.append(j)
        if tokens[j] in ("black", "gray", "grey"):
          found = "black" if tokens[j] == "black" else "gray"
          break
    if found is None and i + 2 < len(tokens) and tokens[i + 1] == "is":  # "background is (plain) gray"
      j = i + 3 if tokens[i + 2] in ("plain", "flat", "dark") and i + 3 < len(tokens) else i + 2
      if tokens[j] in ("black", "gray", "grey"):
        found = "black" if tokens[j] == "black" else "gray"
        span += list(range(i + 1, j + 1))
    for j in span:
      tokens[j] = ""
  return found


def _take_positions(tokens: list[str]) -> list[tuple[int, str]]:
  """Finds and blanks position phrases; returns (token index, position word) pairs."""
  found = []
  for i, tok in enumerate(tokens):
    nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
    if tok in ("top", "upper", "bottom", "lower") and nxt in ("left", "right"):
      found.append((i, ("top " if tok in ("top", "upper") else "bottom ") + nxt))
      tokens[i] = tokens[i + 1] = ""
      if i + 2 < len(tokens) and tokens[i + 2] == "corner":
        tokens[i + 2] = ""
    elif tok in ("center", "centre", "middle"):
      found.append((i, "center"))
      tokens[i] = ""
  return found


def _blank_references(tokens: list[str]) -> None:
  """Blanks mentions of an object already named ("in front of the red square",
  "behind the circle", "covering the triangle"), so they do not count as new objects."""
  for i, tok in enumerate(tokens):
    if tok in ("behind", "covering") or (tok == "of" and i > 0 and tokens[i - 1] == "front"):
      j = i + 1
      while j < len(tokens) and (tokens[j] in _DETERMINERS or tokens[j] in _COLOR_LEXICON
                                 or tokens[j] in _SIZE_LEXICON):
        j += 1
      if j < len(tokens) and tokens[j] in _SHAPE_LEXICON:
        tokens[i + 1:j + 1] = [""] * (j - i)


def _segment_motion(tokens: list[str]):
  joined = " " + " ".join(t for t in tokens if t) + " "
  if any(t.startswith(("fall", "drop")) for t in tokens):
    return "falling"
  if any(t.startswith(("bounc", "rebound", "ricochet")) for t in tokens):
    return "bouncing"
  if any(t in _STILL_WORDS for t in tokens) or any(
      p in joined for p in (" not moving ", " not move ", " stays put ", " staying put ", " without moving ")):
    return "still"
  directions = [_DIRECTION_LEXICON[t] for t in tokens if t in _DIRECTION_LEXICON]
  return directions[-1] if directions else None


def _split_points(tokens: list[str], shape_at: list[int]) -> list[int]:
  """Index where each object's span starts (the first object's is 0)."""
  starts = [0]
  for prev, nxt in zip(shape_at, shape_at[1:]):
    cut = None
    for j in range(nxt - 1, prev, -1):
      if tokens[j] in _CONJUNCTIONS:
        cut = j + 1
        break
    if cut is None:  # no conjunction: the next object's modifiers start it
      cut = nxt
      while cut - 1 > prev and (tokens[cut - 1] in _COLOR_LEXICON or tokens[cut - 1] in _SIZE_LEXICON
                                or tokens[cut - 1] in _DETERMINERS):
        cut -= 1
    starts.append(cut)
  return starts


def parse_prompt(text: str) -> dict:
  """Best-effort spec of the attributes a prompt names: {'objects': [...]} plus
  'background' when named; an object holds only the keys its words name ('color',
  'shape', 'size', 'motion', 'position'). Understands the generator's wording and common
  synonyms (ball, box, big, little, purple, grey, drifting, dropping, resting, ...)."""
  if not isinstance(text, str):
    raise TypeError(f"parse_prompt takes a str, got {type(text).__name__}")
  tokens = _tokens(text)
  spec = {}
  background = _take_background(tokens)
  if background is not None:
    spec["background"] = background
  positions = _take_positions(tokens)
  _blank_references(tokens)
  shape_at = [i for i, t in enumerate(tokens) if t in _SHAPE_LEXICON]
  starts = _split_points(tokens, shape_at) if shape_at else [0]
  bounds = list(zip(starts, starts[1:] + [len(tokens)]))
  objects = []
  for k, (lo, hi) in enumerate(bounds):
    span = tokens[lo:hi]
    obj = {}
    colors = [_COLOR_LEXICON[t] for t in span if t in _COLOR_LEXICON]
    sizes = [_SIZE_LEXICON[t] for t in span if t in _SIZE_LEXICON]
    if colors:
      obj["color"] = colors[0]
    if shape_at:
      obj["shape"] = _SHAPE_LEXICON[tokens[shape_at[k]]]
    if sizes:
      obj["size"] = sizes[0]
    motion = _segment_motion(span)
    if motion is not None:
      obj["motion"] = motion
    here = [word for i, word in positions if lo <= i < hi]
    if here:
      obj["position"] = here[0]
    if obj:
      plural = bool(shape_at) and tokens[shape_at[k]] in _PLURAL_SHAPES
      objects += [obj, dict(obj)] if plural and "two" in span else [obj]
  spec["objects"] = objects
  return spec
