"""Caption reliance of a DiT per noise level: x0 error with the right / another / no prompt.

A ratio (shuffled / right) of 1.0 means the DiT ignores its caption at that t; see
sora_jax/eval/caption_reliance.py. Writes OUT (default WORKDIR/caption_reliance.json).

With --binding, the binding probe instead: on the two-object validation clips, the x0 error
with the prompt's colour / shape / size / motion words bound to the other object over the
error with the right prompt (1.0: the DiT does not tie that attribute to its object), for
each of --steps; writes OUT (default WORKDIR/binding.json).

  python scripts/caption_reliance.py --config=configs/shapes_tiny.py --workdir=W \
      [--data_workdir=W_WITH_ENCODED_DATA] [--step=N] [--config.data.data_dir=...]
  python scripts/caption_reliance.py ... --binding --steps=2000,4000,6000
  python scripts/caption_reliance.py ... --binding --cond_frames=1   # frame 0 given (i2v)
  python scripts/caption_reliance.py ... --binding --split=train     # on clips it trained on
"""
from absl import app, flags
from ml_collections import config_flags

from sora_jax import paths
from sora_jax.eval import caption_reliance
from sora_jax.models import text_encoder as text_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config the workdir was trained with.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir with DiT checkpoints.")
_DATA = flags.DEFINE_string("data_workdir", "", "Workdir whose encoded data / latent stats to "
                            "use (default: --workdir).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_NUM = flags.DEFINE_integer("num_clips", 48, "Validation clips (with --binding: two-object clips).")
_EMA = flags.DEFINE_bool("ema", True, "Measure the EMA weights (else the raw ones).")
_OUT = flags.DEFINE_string("out", "", "Output JSON (default WORKDIR/caption_reliance.json, "
                           "or WORKDIR/binding.json with --binding).")
_BINDING = flags.DEFINE_bool("binding", False, "Measure binding (see the module docstring).")
_STEPS = flags.DEFINE_list("steps", [], "With --binding: checkpoint steps (default: the newest).")
_TEXT = flags.DEFINE_bool("text_states", False, "With --binding: also measure whether the "
                          "frozen text states carry each object's motion in its words.")
_SPLIT = flags.DEFINE_enum("split", "validation", ["validation", "train"], "With --binding: "
                           "the encoded split whose clips are probed ('train': clips it trained "
                           "on, which tells a learned binding from a memorised one).")
_COND = flags.DEFINE_integer("cond_frames", 0, "With --binding: give the first N latent frames "
                             "clean, as image-to-video trains them, and score the rest.")


def binding_main():
  cfg, workdir = _CONFIG.value, _WORKDIR.value
  batch = caption_reliance.binding_batch(cfg, _DATA.value or workdir, _NUM.value,
                                         split=_SPLIT.value)
  rows = []
  for step in _STEPS.value or [_STEP.value]:
    r = caption_reliance.binding_for_workdir(cfg, workdir, use_ema=_EMA.value, batch=batch,
                                             step=None if step is None else int(step),
                                             cond_frames=_COND.value)
    rows.append(r)
    for t, row in r["by_t"].items():
      print(f"step {r['step']} t={t:>5}: " + "  ".join(
          f"{k} {v['ratio']:.3f}±{v['se']:.3f}" for k, v in row.items() if isinstance(v, dict)))
    for t, row in r.get("motion_head", {}).items():
      print(f"step {r['step']} t={t:>5}: motion head accuracy, right prompt {row['right']:.3f}, "
            f"motions exchanged {row['motion']:.3f} ({row['clips']} clips)")
  record = {"num_clips": len(batch["x0"]), "split": _SPLIT.value, "rows": rows}
  if _TEXT.value:
    record["text_states"] = caption_reliance.text_state_binding(
        text_lib.load_text_encoder(cfg))
    print("text states, 1 - cos of the first colour word: motion swapped "
          f"{record['text_states']['motion_swapped']:.4f}, unrelated prompts "
          f"{record['text_states']['unrelated']:.4f}")
  out = _OUT.value or paths.join(workdir, "binding.json")
  paths.write_json(out, record)
  print(f"{len(batch['x0'])} two-object clips -> {out}")


def main(argv):
  del argv
  if _BINDING.value:
    return binding_main()
  r = caption_reliance.for_workdir(_CONFIG.value, _WORKDIR.value, _DATA.value or None,
                                   _NUM.value, use_ema=_EMA.value, step=_STEP.value)
  for t, e in r["by_t"].items():
    print(f"t={t:>5}: x0 MSE right {e['right']:.4f}  shuffled {e['shuffled']:.4f}  "
          f"null {e['null']:.4f}  ratio {e['ratio']:.3f}")
  out = _OUT.value or paths.join(_WORKDIR.value, "caption_reliance.json")
  paths.write_json(out, r)
  print(f"step {r['step']}, {r['num_clips']} clips -> {out}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
