"""Draws the README's picture: shipped-model samples of held-out prompts beside the truth.

Samples the first `--num_prompts` held-out ShapesWorld prompts (the ones
`pretrained/shapes/adherence.json` is scored on, in that order: not picked) with the
ordinary sample mode, then lays each out as one row: the prompt, the ShapesWorld
detector's verdict on the sample, every `--every`-th frame of the sample and of the
ground-truth clip.

  python scripts/make_readme_figure.py [--workdir=pretrained/shapes] [--out=docs/figures/shapes_samples.png]
"""
import io
import json
import subprocess
import sys
import tempfile

from absl import app, flags
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sora_jax import paths
from sora_jax.data import shapes_world, video_io
from sora_jax.eval import shapes_detector

_WORKDIR = flags.DEFINE_string("workdir", "pretrained/shapes", "Sampling workdir with config.py.")
_OUT = flags.DEFINE_string("out", "docs/figures/shapes_samples.png", "PNG to write.")
_NUM = flags.DEFINE_integer("num_prompts", 8, "Rows: the first N held-out prompts.")
_EVERY = flags.DEFINE_integer("every", 4, "Show every n-th frame (17 frames, 4: 5 of them).")
_SCALE = flags.DEFINE_integer("scale", 3, "Pixel upscaling (nearest).")

FRAMES, SIZE, SEED, STEPS, CFG_SCALE = 17, 32, 0, 30, 4.0  # as adherence.json
_GAP, _TEXT_H, _PAD = 4, 18, 8


def sample(workdir: str, prompts: list[str], out_dir: str) -> list[np.ndarray]:
  """The sample mode's videos of `prompts` (sample i uses seed SEED + i), in order."""
  prompts_file = paths.join(out_dir, "prompts.txt")
  paths.write_bytes_atomic(prompts_file, ("\n".join(prompts) + "\n").encode("utf-8"))
  # --config reads only local files: a bucket workdir's config.py is copied down first.
  with paths.local_file(paths.join(workdir, "config.py")) as config:
    subprocess.run([sys.executable, "-m", "sora_jax", f"--config={config}",
                    f"--workdir={workdir}", "--mode=sample", f"--config.sample.output_dir={out_dir}",
                    f"--config.sample.prompts_file={prompts_file}", f"--config.sample.seed={SEED}",
                    f"--config.sample.steps={STEPS}", f"--config.sample.cfg_scale={CFG_SCALE}",
                    f"--config.sample.num_frames={FRAMES}", f"--config.sample.height={SIZE}",
                    f"--config.sample.width={SIZE}"], check=True)
  rows = json.loads(paths.read_text(paths.join(out_dir, "samples.json")))
  # The GIFs hold the exact colours (the mp4s are chroma-subsampled), as the detector saw them.
  return [video_io.read_video(r["gif"])[0] for r in rows]


def strip(video_THWC: np.ndarray, every: int, scale: int) -> Image.Image:
  """Every `every`-th frame side by side, upscaled `scale`x (nearest)."""
  frames = video_THWC[::every]
  h, w = frames.shape[1] * scale, frames.shape[2] * scale
  img = Image.new("RGB", (len(frames) * (w + _GAP) - _GAP, h), "white")
  for i, f in enumerate(frames):
    img.paste(Image.fromarray(f).resize((w, h), Image.NEAREST), (i * (w + _GAP), 0))
  return img


def grid(prompts, samples, truths, verdicts, every: int, scale: int) -> Image.Image:
  font = ImageFont.load_default(size=13)
  strips = [(strip(s, every, scale), strip(t, every, scale)) for s, t in zip(samples, truths)]
  sw, sh = strips[0][0].size
  width = 2 * sw + 4 * _PAD
  row_h = 2 * _TEXT_H + sh + _PAD
  img = Image.new("RGB", (width, _TEXT_H + _PAD + len(strips) * row_h), "white")
  draw = ImageDraw.Draw(img)
  draw.text((_PAD, 2), "shipped model (pretrained/shapes)", fill="black", font=font)
  draw.text((sw + 3 * _PAD, 2), "ground truth", fill="black", font=font)
  for i, ((s, t), prompt, verdict) in enumerate(zip(strips, prompts, verdicts)):
    y = _TEXT_H + _PAD + i * row_h
    draw.text((_PAD, y), f"\u201c{prompt}\u201d", fill="black", font=font)
    draw.text((_PAD, y + _TEXT_H), verdict, fill=(0, 110, 0) if verdict == "detector: match"
              else (170, 0, 0), font=font)
    img.paste(s, (_PAD, y + 2 * _TEXT_H))
    img.paste(t, (sw + 3 * _PAD, y + 2 * _TEXT_H))
  return img


def main(argv):
  del argv
  clips = [shapes_world.generate_clip(shapes_world.validation_seed(SEED, i), FRAMES, SIZE, SIZE,
                                      two_object_fraction=0.5) for i in range(_NUM.value)]
  prompts = [c["prompt"] for c in clips]
  with tempfile.TemporaryDirectory() as tmp:
    samples = sample(_WORKDIR.value, prompts, tmp)
  verdicts = []
  for video, clip in zip(samples, clips):
    failed = shapes_detector.failures(shapes_detector.score(video, clip["spec"]))
    verdicts.append("detector: match" if not failed else "detector: wrong " + ", ".join(failed))
  img = grid(prompts, samples, [c["video"] for c in clips], verdicts, _EVERY.value, _SCALE.value)
  buf = io.BytesIO()  # encoded here, written through paths (--out may be on a bucket)
  img.save(buf, format=Image.registered_extensions().get(paths.path(_OUT.value).suffix.lower(),
                                                         "PNG"), optimize=True)
  paths.write_bytes_atomic(_OUT.value, buf.getvalue())
  print(f"wrote {_OUT.value}: {sum(v == 'detector: match' for v in verdicts)} of "
        f"{len(verdicts)} samples match their prompt")


if __name__ == "__main__":
  app.run(main)
