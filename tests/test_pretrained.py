"""The shipped model (pretrained/shapes) loads on a fresh clone and reproduces its record.

pretrained/shapes/adherence.json was written by scripts/score_pretrained.py with the same
function this test calls; sampling is deterministic for a fixed seed, so the per-prompt
matches and the mean pixel value come back (up to float noise across CPUs).
"""
import json
import os

import numpy as np
import pytest

from sora_jax import paths

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
WORKDIR = os.path.join(ROOT, "pretrained", "shapes")
RECORD = os.path.join(WORKDIR, "adherence.json")
NUM_PROMPTS = 8  # The test re-scores the first prompts of the record.

pytestmark = pytest.mark.skipif(not os.path.exists(RECORD), reason="no shipped model")


def _load_config():
  return paths.load_config(os.path.join(WORKDIR, "config.py"))


def test_shipped_model_reproduces_its_recorded_adherence():
  from sora_jax.eval import adherence  # pylint: disable=g-import-not-at-top
  from sora_jax.sampling.sample import VideoPipeline  # pylint: disable=g-import-not-at-top
  with open(RECORD) as f:
    record = json.load(f)
  pipe = VideoPipeline(_load_config(), WORKDIR)
  got = adherence.score_model(pipe, NUM_PROMPTS, record["frames"], record["height"],
                              record["width"], steps=record["steps"],
                              cfg_scale=record["cfg_scale"], seed=record["seed"],
                              two_object_fraction=record["two_object_fraction"])
  assert got["prompts"] == record["prompts"][:NUM_PROMPTS]
  assert got["ground_truth"]["match"] >= 0.85  # the ceiling these prompts allow
  agree = np.mean([a == b for a, b in zip(got["matches"], record["matches"][:NUM_PROMPTS])])
  assert agree >= 7 / 8, (got["matches"], record["matches"][:NUM_PROMPTS])
  np.testing.assert_allclose(got["mean_pixels"], record["mean_pixels"][:NUM_PROMPTS], atol=0.5)
