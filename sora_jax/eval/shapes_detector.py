"""ShapesWorld yardstick: finds the objects of a video and scores it against its prompt.

Implements the evaluator of `docs/specs/shapes_world.md` in numpy (no scipy):
1. background = black or gray, whichever is nearer the median border colour;
2. each pixel takes the palette colour it is clearly nearer to than to the background,
   measured along the background-to-colour line so that blurred edges keep their colour
   (`classify_pixels`);
3. 4-connected components per colour and frame (vectorised union-find); specks (under a
   quarter of a small object's box) and one-pixel seams are ignored;
4. per colour, the largest component of each frame is the object's track; from it come
   colour, shape (median box fill ratio and top/bottom asymmetry, nearest to the same
   rasterised shapes at the observed size), size (median box side over min(H, W)), motion
   (centroid track), position (box centre) and permanence (present in every frame, one
   component, steady area).
`score` matches a video to a spec; `adherence` summarises many.

Refinements of the spec's wording, all neutral on flat ground truth:
- `still` uses the largest displacement from the first frame (not the net move, which a
  bounce can undo);
- shape adds vertical asymmetry to the fill ratio (triangles and circles of 16-pixel
  frames share fill ratios) and is measured in the frames where no other colour touches
  the object, so an object passing in front does not change the shape of the one behind;
- pixel colours are read as blends with the background, so a 3x3-blurred clip still
  scores like the sharp one (tests/test_shapes_detector.py measures it).
"""
from __future__ import annotations

import itertools
import json

import numpy as np

from sora_jax.data import shapes_world as sw

_COLOR_NAMES = tuple(sw.COLORS)
_PALETTE_K3 = np.array([sw.COLORS[c] for c in _COLOR_NAMES], np.float32)
# A pixel is an object colour when its distance to the background-to-colour line is at
# most this share of the colour's distance to the background (see classify_pixels).
_MAX_RESIDUAL = 0.45
# Pixels no such blend explains take the nearest colour when their distance to it is
# under this share of their distance to the background.
_CLEAR_RATIO = 0.5
# Components smaller than this share of a small object's box area (side^2) are specks;
# a small ground-truth triangle covers about half its box.
_MIN_AREA_FRACTION = 0.25
# ... and thinner than this share of a small object's side (area over the box's long
# side) are seams: the blurred border between two objects can read as a third colour.
_MIN_THICKNESS = 0.3
# A colour is an object when its largest component is present in this share of frames.
_MIN_PRESENCE = 0.25
# Permanence: every frame's area within this factor range of the median area.
_AREA_STEADY = (0.5, 1.6)
_SIZE_SPLIT = sum(sw.SIZE_FRACTIONS.values()) / 2  # small below, large above
_STILL_MOVE = 0.1  # largest displacement (frame sides) below which an object is still
_WALL_TOL = 0.1  # box within this share of the side from a wall touches it
_REVERSAL = 0.08  # a bounce moves at least this share of the side before and after
_ACCEL = 0.003  # quadratic coefficient (frame heights / frame^2) marking gravity (g/2 >= 0.006)
_REBOUND = 0.06  # rise after the floor contact (frame heights) that marks a bounce


# ---------------------------------------------------------------- pixels and components

def estimate_background(video_THWC: np.ndarray) -> str:
  """'black' or 'gray': the one nearer the per-channel median of all border pixels."""
  v = video_THWC
  border = np.concatenate([v[:, 0], v[:, -1], v[:, :, 0], v[:, :, -1]], axis=1).reshape(-1, 3)
  median = np.median(border.astype(np.float32), axis=0)
  names = tuple(sw.BACKGROUNDS)
  d = [np.linalg.norm(median - np.array(sw.BACKGROUNDS[n], np.float32)) for n in names]
  return names[int(np.argmin(d))]


def classify_pixels(video_THWC: np.ndarray, background: str) -> np.ndarray:
  """(T, H, W) int8 palette index of each pixel (-1: background or unclear).

  A pixel is read as a blend bg + a * (colour - bg) of the background and each palette
  colour; it takes the colour whose blend explains it best (smallest residual) when it is
  more colour than background (a >= 0.5, i.e. nearer the colour along that line) and
  the residual is small (`_MAX_RESIDUAL` of the colour's distance to the background).
  On flat ground truth this is exactly the nearest palette colour; on blurred samples
  an edge pixel half yellow, half black stays yellow instead of reading as orange.
  """
  x_N3 = video_THWC.reshape(-1, 3).astype(np.float32)
  bg = np.array(sw.BACKGROUNDS[background], np.float32)
  dir_K3 = _PALETTE_K3 - bg
  len2_K = (dir_K3 * dir_K3).sum(1)
  rel_N3 = x_N3 - bg
  # Channel sums, not a matmul: BLAS threads on an (N, 3) x (3, K) product cost more
  # than they save and stall on a shared machine.
  a_NK = sum(rel_N3[:, c, None] * dir_K3[:, c] for c in range(3)) / len2_K
  on_segment_NK = np.clip(a_NK, 0.0, 1.0)
  # |rel - s*dir|^2 / |dir|^2 with rel.dir = a*|dir|^2, expanded to stay (N, K).
  residual2_NK = (rel_N3 * rel_N3).sum(1, keepdims=True) / len2_K + on_segment_NK * (on_segment_NK - 2 * a_NK)
  best = residual2_NK.argmin(1)
  rows = np.arange(len(best))
  clear = (a_NK[rows, best] >= 0.5) & (residual2_NK[rows, best] <= _MAX_RESIDUAL ** 2)
  label = np.where(clear, best, -1)
  # Pixels no background blend explains (the seam between two objects): nearest colour
  # when clearly nearer to it than to the background.
  odd = np.flatnonzero(residual2_NK[rows, best] > _MAX_RESIDUAL ** 2)
  d2_MK = ((x_N3[odd, None] - _PALETTE_K3) ** 2).sum(-1)
  nearest = d2_MK.argmin(1)
  near = d2_MK[np.arange(len(odd)), nearest] < _CLEAR_RATIO ** 2 * (rel_N3[odd] ** 2).sum(1)
  label[odd[near]] = nearest[near]
  return label.astype(np.int8).reshape(video_THWC.shape[:-1])


def label_components(color_THW: np.ndarray) -> np.ndarray:
  """(T, H, W) int64 component id per pixel (-1 where color is -1): 4-connected pixels of
  one colour in one frame share the id, the flat index of the component's first pixel.

  Vectorised union-find over neighbour edges (hook each edge's larger root under its
  smaller, then compress paths); a few rounds suffice, even for noise.
  """
  T, H, W = color_THW.shape
  n = T * H * W
  valid = color_THW >= 0
  idx = np.arange(n).reshape(T, H, W)
  same_x = valid[:, :, 1:] & (color_THW[:, :, 1:] == color_THW[:, :, :-1])
  same_y = valid[:, 1:] & (color_THW[:, 1:] == color_THW[:, :-1])
  a = np.concatenate([idx[:, :, :-1][same_x], idx[:, :-1][same_y]])
  b = np.concatenate([idx[:, :, 1:][same_x], idx[:, 1:][same_y]])
  parent = np.arange(n)
  while True:
    pa, pb = parent[a], parent[b]
    differ = pa != pb
    if not differ.any():
      break
    pa, pb = pa[differ], pb[differ]
    np.minimum.at(parent, np.maximum(pa, pb), np.minimum(pa, pb))
    while True:
      grand = parent[parent]
      if np.array_equal(grand, parent):
        break
      parent = grand
  return np.where(valid, parent.reshape(T, H, W), -1)


def _component_stats(color_THW: np.ndarray, comp_THW: np.ndarray) -> dict:
  """Per component: frame, colour, area, box (y0, y1, x0, x1 inclusive), centroid,
  vertical asymmetry (bottom-half minus top-half pixels over area)."""
  T, H, W = color_THW.shape
  where = np.flatnonzero(comp_THW.ravel() >= 0)
  roots, inv = np.unique(comp_THW.ravel()[where], return_inverse=True)
  if roots.size == 0:
    return {k: np.zeros(0) for k in ("frame", "color", "area", "y0", "y1", "x0", "x1", "cy", "cx", "asym")}
  t, rem = np.divmod(where, H * W)
  ys, xs = np.divmod(rem, W)
  area = np.bincount(inv)
  order = np.argsort(inv, kind="stable")
  starts = np.concatenate([[0], np.cumsum(area)[:-1]])
  y0, y1 = np.minimum.reduceat(ys[order], starts), np.maximum.reduceat(ys[order], starts)
  x0, x1 = np.minimum.reduceat(xs[order], starts), np.maximum.reduceat(xs[order], starts)
  height = (y1 - y0 + 1)[inv]
  row2 = 2 * (ys - y0[inv]) + 1  # twice the row centre, against the box height
  asym = (np.bincount(inv, row2 > height, len(roots)) - np.bincount(inv, row2 < height, len(roots))) / area
  return {"frame": roots // (H * W), "color": color_THW.ravel()[roots], "area": area,
          "y0": y0, "y1": y1, "x0": x0, "x1": x1,
          "cy": np.bincount(inv, ys, len(roots)) / area + 0.5,
          "cx": np.bincount(inv, xs, len(roots)) / area + 0.5, "asym": asym}


# ---------------------------------------------------------------- attributes

def _shape_reference(side: int):
  """(fill, asymmetry) of each spec shape rasterised at `side` pixels."""
  refs = {}
  for shape in sw.SHAPES:
    m = sw.shape_mask(shape, side)
    rows = m.sum(1)
    row2 = 2 * np.arange(m.shape[0]) + 1
    asym = (rows[row2 > m.shape[0]].sum() - rows[row2 < m.shape[0]].sum()) / m.sum()
    refs[shape] = (m.mean(), asym)
  return refs


def _classify_shape(fill: float, asym: float, side: float) -> str:
  refs = _shape_reference(int(max(3, round(side))))
  return min(sw.SHAPES, key=lambda s: abs(fill - refs[s][0]) + abs(asym - refs[s][1]))


def _reversal(p, lo, hi, side):
  """True when the track turns back at a wall on this axis: its extreme lies a clear
  distance from both ends of the track, and the box touches that wall there."""
  need, tol = _REVERSAL * side, _WALL_TOL * side
  k = int(np.argmax(p))
  if p[k] - p[0] >= need and p[k] - p[-1] >= need and side - 1 - hi[k] <= tol:
    return True
  k = int(np.argmin(p))
  return p[0] - p[k] >= need and p[-1] - p[k] >= need and lo[k] <= tol


def _falling(t, cy, cx, y1, H, W) -> bool:
  """Downward first, then a floor bounce or a visible acceleration, without sideways
  motion."""
  if np.ptp(cx) >= _STILL_MOVE * W:
    return False
  # The first descent ends at the lowest point before the first clear rise after a clear
  # drop (later contacts can sit a pixel lower, so the global lowest point would be wrong).
  lowest = np.maximum.accumulate(cy)
  rose = np.flatnonzero((lowest - cy >= max(1.0, _REBOUND * H)) & (lowest - cy[0] >= _STILL_MOVE * H))
  end = rose[0] if rose.size else len(cy)
  k = int(np.argmax(cy[:end]))
  if cy[k] - cy[0] < _STILL_MOVE * H:
    return False
  if rose.size and H - 1 - y1[k] <= _WALL_TOL * H:
    return True
  if k >= 4:  # accelerating: a clearly positive quadratic term on the way down
    c = np.polyfit(t[:k + 1].astype(np.float64), cy[:k + 1], 2)[0]
    return c >= _ACCEL * H
  return False


def classify_motion(t, cy, cx, y0, y1, x0, x1, H, W) -> str:
  """Motion word of a track: frames `t`, centroids, boxes (inclusive pixel bounds)."""
  if len(t) < 2:
    return "still"
  move = max(np.abs(cy - cy[0]).max() / H, np.abs(cx - cx[0]).max() / W)
  if move < _STILL_MOVE:
    return "still"
  if _falling(t, cy, cx, y1, H, W):
    return "falling"
  if _reversal(cy, y0, y1, H) or _reversal(cx, x0, x1, W):
    return "bouncing"
  dy, dx = (cy[-1] - cy[0]) / H, (cx[-1] - cx[0]) / W
  if abs(dx) >= abs(dy):
    return "right" if dx > 0 else "left"
  return "down" if dy > 0 else "up"


def _alone(color_THW, k, t, y0, y1, x0, x1) -> bool:
  """True when no colour but `k` lies in the box grown by one pixel, in frame t."""
  patch = color_THW[t, max(y0 - 1, 0):y1 + 2, max(x0 - 1, 0):x1 + 2]
  return not ((patch >= 0) & (patch != k)).any()


def detect(video_THWC: np.ndarray) -> list[dict]:
  """Objects of a uint8 (T, H, W, 3) video (use video[None] for one image).

  Each object: 'color', 'shape', 'size', 'motion', 'position' (box centre: the median for
  still objects, the first frame's otherwise), 'permanence' (present in every frame, one
  component, steady area), and measurements 'fill', 'asymmetry', 'side_fraction',
  'frames_present'. Sorted by colour order of the palette.
  """
  v = np.asarray(video_THWC)
  if v.ndim != 4 or v.shape[-1] != 3:
    raise ValueError(f"video shape {v.shape}: expected (T, H, W, 3); add a frame axis with video[None]")
  if v.dtype != np.uint8:
    raise ValueError(f"video dtype {v.dtype}: expected uint8 in [0, 255]")
  T, H, W = v.shape[:3]
  background = estimate_background(v)
  color = classify_pixels(v, background)
  st = _component_stats(color, label_components(color))
  small_side = sw.object_side("small", H, W)
  long_side = np.maximum(st["y1"] - st["y0"], st["x1"] - st["x0"]) + 1
  keep = (st["area"] >= max(3, _MIN_AREA_FRACTION * small_side ** 2)) & (
      st["area"] >= _MIN_THICKNESS * small_side * long_side)
  objects = []
  for k, name in enumerate(_COLOR_NAMES):
    sel = np.flatnonzero(keep & (st["color"] == k))
    if sel.size == 0:
      continue
    frames = st["frame"][sel]
    count = np.bincount(frames, minlength=T)
    present = np.flatnonzero(count)
    if len(present) < max(1, _MIN_PRESENCE * T):
      continue
    # Largest component per frame: sort by (frame, -area), take each frame's first.
    order = sel[np.lexsort((-st["area"][sel], frames))]
    main = order[np.concatenate([[True], np.diff(st["frame"][order]) > 0])]
    g = {key: st[key][main].astype(np.float64) for key in st}
    t = g["frame"].astype(np.int64)
    bh, bw = g["y1"] - g["y0"] + 1, g["x1"] - g["x0"] + 1
    # Shape and size from the frames where no other colour touches the object's box
    # (so nothing hides it and no blurred seam adds to it); failing those, the frames
    # where it shows most of itself.
    alone = np.array([_alone(color, k, *(int(g[key][i]) for key in ("frame", "y0", "y1", "x0", "x1")))
                      for i in range(len(t))])
    full = alone if alone.any() else g["area"] >= 0.95 * g["area"].max()
    side = float(np.median(np.maximum(bh, bw)[full]))
    fill = float(np.median((g["area"] / (bh * bw))[full]))
    asym = float(np.median(g["asym"][full]))
    motion = "still" if T == 1 else classify_motion(t, g["cy"], g["cx"], g["y0"], g["y1"], g["x0"], g["x1"], H, W)
    centre_y, centre_x = (g["y0"] + g["y1"] + 1) / 2, (g["x0"] + g["x1"] + 1) / 2
    if motion == "still":
      centre_y, centre_x = np.median(centre_y), np.median(centre_x)
    else:
      centre_y, centre_x = centre_y[0], centre_x[0]
    median_area = np.median(g["area"])
    steady = bool(np.all((g["area"] >= _AREA_STEADY[0] * median_area) & (g["area"] <= _AREA_STEADY[1] * median_area)))
    objects.append({
        "color": name,
        "shape": _classify_shape(fill, asym, side),
        "size": "small" if side / min(H, W) < _SIZE_SPLIT else "large",
        "motion": motion,
        "position": sw.position_word(float(centre_y), float(centre_x), H, W),
        "permanence": bool(len(present) == T and count.max() == 1 and steady),
        "fill": fill, "asymmetry": asym, "side_fraction": side / min(H, W),
        "frames_present": int(len(present)),
    })
  return objects


# ---------------------------------------------------------------- scoring

_ATTRIBUTES = ("color", "shape", "size", "motion", "position")
# What a match needs, in report order: each is True, False or None (not named) in `score`.
CHECKS = ("count",) + _ATTRIBUTES + ("permanence",)


def _as_spec(spec) -> dict:
  if isinstance(spec, (str, bytes)):
    spec = json.loads(spec)
  if not isinstance(spec, dict) or not isinstance(spec.get("objects"), list):
    raise ValueError("spec must be a dict (or its JSON) with an 'objects' list, as generate_clip or parse_prompt give")
  return spec


def score(video_THWC: np.ndarray, spec, objects: list[dict] | None = None) -> dict:
  """Scores one video against a spec (dict or JSON string; only named attributes count).

  Returns 'match' (count right, and every named object found with every named attribute
  and permanence), 'count', per-attribute booleans 'color', 'shape', 'size', 'motion',
  'position', 'permanence' (None where the spec names none of that attribute),
  'background' (None unless named; reported, not part of 'match') and 'objects' (the
  detections). Spec objects are paired with detections to agree on most attributes.
  `objects` reuses a `detect` result.
  """
  spec = _as_spec(spec)
  wanted = spec["objects"]
  found = detect(video_THWC) if objects is None else objects
  n = len(wanted)
  padded = found + [None] * max(0, n - len(found))
  best, best_hits = None, -1
  for pick in itertools.permutations(range(len(padded)), n):
    checks = []
    for want, j in zip(wanted, pick):
      got = padded[j]
      checks.append({a: (got is not None and got[a] == want[a]) if a in want else None for a in _ATTRIBUTES}
                    | {"permanence": got is not None and got["permanence"]})
    hits = sum(v is True for c in checks for v in c.values())
    if hits > best_hits:
      best, best_hits = checks, hits
  best = best or []
  out = {"count": len(found) == n}
  for a in _ATTRIBUTES + ("permanence",):
    named = [c[a] for c in best if c[a] is not None]
    out[a] = all(named) if named else None
  out["match"] = out["count"] and all(v is not False for v in (out[a] for a in _ATTRIBUTES + ("permanence",)))
  out["background"] = (estimate_background(np.asarray(video_THWC)) == spec["background"]
                       if "background" in spec else None)
  out["objects"] = found
  return out


def adherence(videos, specs) -> dict:
  """Summary over clips: 'match' rate, per-attribute rates ('color', 'shape', 'size',
  'motion', 'position', 'permanence', 'count', 'background'; each over the clips that name
  it, None where none does), 'match_one_object' / 'match_two_objects' (the match rate over
  the clips naming one / two objects; None where there are none), 'checks_one_object' /
  'checks_two_objects' (each check's pass rate over those clips: which attributes fail when
  a prompt names two subjects) and 'n', 'n_one_object', 'n_two_objects'. `videos`:
  iterable of uint8 (T, H, W, 3)."""
  specs = list(specs)
  return summarize([score(v, s) for v, s in zip(videos, specs, strict=True)], specs)


def failures(result: dict) -> list[str]:
  """The checks (`CHECKS`) a `score` result failed, in that order; [] when it matched."""
  return [a for a in CHECKS if result[a] is False]


def summarize(scores: list[dict], specs) -> dict:
  """`adherence` of already computed `score` results (one per spec, in order)."""
  specs = [_as_spec(s) for s in specs]
  if len(scores) != len(specs):
    raise ValueError(f"{len(scores)} scores for {len(specs)} specs: give one score per spec")
  out = {"n": len(scores)}
  for key in ("match",) + CHECKS + ("background",):
    out[key] = _rate(scores, key)
  for k, name in ((1, "one_object"), (2, "two_objects")):
    chosen = [s for s, sp in zip(scores, specs) if len(sp["objects"]) == k]
    out[f"match_{name}"] = _rate(chosen, "match")
    out[f"n_{name}"] = len(chosen)
    out[f"checks_{name}"] = {key: _rate(chosen, key) for key in CHECKS}
  return out


def _rate(scores: list[dict], key: str) -> float | None:
  """Mean of `key` over the scores that name it (not None); None where none does."""
  vals = [s[key] for s in scores if s[key] is not None]
  return float(np.mean(vals)) if vals else None
