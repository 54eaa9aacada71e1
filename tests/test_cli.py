"""The entry point refuses bad input with one clear line, before building anything."""
import glob
import importlib
import importlib.util
import os
import subprocess
import sys

import pytest

from sora_jax import config_check
from sora_jax.config_defaults import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  return subprocess.run(
      [sys.executable, "-m", "sora_jax", "--config=configs/shapes_tiny.py", "--workdir=/tmp/sj_cli",
       *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, expect", [
    (["--mode=dance"], "--mode=dance"),
    (["--config.train.nope=3"], "'nope'"),
    (["--config.train.num_steps=abc"], "num_steps"),
    (["--mode=sample", "--config.sample.num_frames=16"], "use 13 or 17"),
    (["--mode=sample", "--config.sample.task=dream"], "t2v"),
    (["--mode=sample", "--config.sample.height=30"], "height=30"),
    (["--mode=sample", "--config.sample.task=i2v"], "sample.image"),
    (["--mode=sample", "--config.sample.task=loop", "--config.sample.video=clip.mp4"],
     "starts from sample.image"),
    (["--config.data.buckets=17x32"], "FRAMESxHEIGHTxWIDTH"),
    (["--config.dit.attention=flashy"], "blockwise"),
    (["--mode=train", "--config.dit.scan_unroll=-1"], "scan_unroll=-1"),
    (["--mode=train", "--config.train.init_from=/no/such/run"], "train.init_from"),
    (["--mode=train_vae", "--config.vae_train.crop_size=10"], "crop_size=10"),
    (["--mode=compile", "--config.compile.programs=train,eval"], "compile.programs"),
])
def test_bad_input_is_one_clear_line(args, expect):
  r = _run(*args)
  assert r.returncode == 2, r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("sora_jax: error:"), r.stderr
  assert expect in lines[0]


def test_demo_config_is_valid_for_every_mode():
  """The demo config passes every mode's checks, and each mode does check (a bad field fails)."""
  cfg = base_config()
  for mode in config_check.MODES:
    assert config_check.check(cfg, mode) is None
    bad = base_config()
    bad.data.batch_size = 0
    with pytest.raises(config_check.ConfigError, match="data.batch_size=0"):
      config_check.check(bad, mode)


@pytest.mark.parametrize("field,value,match", [
    ("clause_tokens", -1, "text.clause_tokens=-1"),
    ("clause_split", r"(and)\s", "capturing groups"),
    ("clause_split", "[and", "not a regular expression"),
])
def test_bad_clause_settings_are_one_clear_line(field, value, match):
  cfg = base_config()
  cfg.text[field] = value
  with pytest.raises(config_check.ConfigError, match=match) as e:
    config_check.check(cfg, "train")
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("section,field,value,match", [
    ("diffusion", "binding_weight", -0.1, "diffusion.binding_weight=-0.1"),
    ("diffusion", "binding_margin", 0.0, "binding_margin=0.0 > 0"),
    ("diffusion", "binding_t_min", 1.0, "binding_t_min=1.0 in"),
    ("data", "name", "video_folder", "data.binding_negatives needs ShapesWorld"),
    ("data", "binding_swap", "size", "data.binding_swap='size'"),
    ("diffusion", "binding_field", "prompts", "diffusion.binding_field='prompts'"),
    ("diffusion", "binding_grad", "video", "diffusion.binding_grad='video'"),
    ("diffusion", "binding_loss", "bce", "diffusion.binding_loss='bce'"),
    ("diffusion", "binding_loss", "match", "set dit.match_head=True"),
    ("diffusion", "motion_weight", -0.1, "diffusion.motion_weight=-0.1: use a weight >= 0"),
    ("diffusion", "motion_weight", 0.5, "set dit.motion_head=True"),
])
def test_bad_binding_settings_are_one_clear_line(section, field, value, match, tmp_path):
  cfg = base_config()
  cfg.data.binding_negatives = True
  cfg.data.video_dir = str(tmp_path)
  cfg[section][field] = value
  with pytest.raises(config_check.ConfigError, match=match) as e:
    config_check.check(cfg, "train")
  assert "\n" not in str(e.value)


def test_a_binding_field_the_run_never_trains_with_is_refused(tmp_path):
  cfg = base_config()
  cfg.data.binding_negatives, cfg.data.video_dir = True, str(tmp_path)
  cfg.diffusion.binding_weight, cfg.diffusion.binding_field = 0.5, "prompt"
  cfg.data.caption_field = "caption"
  with pytest.raises(config_check.ConfigError, match="binding_field='prompt' names a text"):
    config_check.check(cfg, "train")
  for cfg.data.caption_field in ("prompt", "both"):
    config_check.check(cfg, "train")


def test_a_cross_attention_contrast_on_joint_blocks_is_refused(tmp_path):
  """Joint (MMDiT) blocks have no cross-attention: binding_grad='cross_attn' is refused
  with the way out; 'text' (their text stream) passes, as 'cross_attn' on Wan blocks."""
  cfg = base_config()
  cfg.data.binding_negatives, cfg.data.video_dir = True, str(tmp_path)
  cfg.diffusion.binding_weight, cfg.diffusion.binding_grad = 0.5, "cross_attn"
  config_check.check(cfg, "train")
  cfg.dit.joint_attention = True
  with pytest.raises(config_check.ConfigError, match="cross_attn' names the cross-attention.*"
                     "use binding_grad='text'") as e:
    config_check.check(cfg, "train")
  assert "\n" not in str(e.value)
  cfg.diffusion.binding_grad = "text"
  config_check.check(cfg, "train")


def test_a_match_contrast_outside_all_parameters_is_refused(tmp_path):
  """The matching head is in no restricted group: binding_loss='match' needs
  binding_grad='all'."""
  cfg = base_config()
  cfg.data.binding_negatives, cfg.data.video_dir = True, str(tmp_path)
  cfg.diffusion.binding_weight, cfg.diffusion.binding_loss = 0.5, "match"
  cfg.dit.match_head, cfg.diffusion.binding_grad = True, "text"
  with pytest.raises(config_check.ConfigError, match="head is outside that group.*"
                     "set binding_grad='all'") as e:
    config_check.check(cfg, "train")
  assert "\n" not in str(e.value)
  cfg.diffusion.binding_grad = "all"
  config_check.check(cfg, "train")


def test_motion_negatives_with_a_caption_contrast_are_refused(tmp_path):
  """data.binding_swap='motion' makes no caption negatives: a contrast that would read one
  is refused; one over prompts passes."""
  cfg = base_config()
  cfg.data.binding_negatives, cfg.data.video_dir = True, str(tmp_path)
  cfg.data.binding_swap, cfg.diffusion.binding_weight = "motion", 0.5
  for field, caption_field in (("both", "both"), ("prompt", "both"), ("prompt", "prompt"),
                               ("both", "prompt")):
    cfg.diffusion.binding_field, cfg.data.caption_field = field, caption_field
    config_check.check(cfg, "train")
  for field, caption_field in (("caption", "caption"), ("both", "caption"), ("caption", "both")):
    cfg.diffusion.binding_field, cfg.data.caption_field = field, caption_field
    with pytest.raises(config_check.ConfigError, match="binding_swap='motion' makes negatives"):
      config_check.check(cfg, "train")
  cfg.diffusion.binding_weight = 0.0  # no contrast: nothing to refuse
  config_check.check(cfg, "train")


def test_help_lists_the_modes_flags_and_override_syntax():
  r = subprocess.run([sys.executable, "-m", "sora_jax", "--help"], capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  for mode in config_check.MODES:  # one line each: the mode, then what it does
    row = [l for l in lines if l.split()[:1] == [mode]]
    assert len(row) == 1 and len(row[0].split()) > 3, (mode, r.stdout)
  for needed in ("--config=", "--workdir=", "--mode=", "--config.SECTION.FIELD=VALUE",
                 "docs/configuration.md"):
    assert needed in r.stdout, needed


@pytest.mark.parametrize("flag, line", [
    ("--config.dit.dimm=3", "--config.dit.dimm=3: unknown or invalid config key 'dimm' "
                            '(did you mean "dim"?)'),
    ("--config.trainn.lr=1", "--config.trainn.lr=1: unknown or invalid config key 'trainn' "
                             '(did you mean "train"?)'),
])
def test_unknown_key_is_one_clean_line_with_the_suggestion(flag, line):
  r = _run(flag)
  assert r.returncode == 2, r.stderr
  assert r.stderr.splitlines() == [f"sora_jax: error: {line}; every key and its default is "
                                   "listed in docs/configuration.md"], r.stderr


def test_latent_grid_error_names_the_fix():
  cfg = base_config()
  assert config_check.latent_grid_error(cfg, 17, 32, 48) is None
  assert "multiple of 8" in config_check.latent_grid_error(cfg, 17, 36, 32)


@pytest.mark.parametrize("line, expect", [
    ('{"task": "t2i"', "line 2 is not JSON"),
    ('["t2i"]', "line 2 is list, not a JSON object"),
    ('{"tsak": "t2i"}', "line 2: unknown sample field 'tsak'"),
    ('{"output_dir": "/tmp/x"}', "line 2: sample.output_dir holds for the whole run"),
    ('{"steps": "ten"}', "line 2: sample.steps='ten' must be int"),
    ('{"cfg_scale": true}', "line 2: sample.cfg_scale=True must be float"),
    ('{"task": "i2v"}', "line 2: sample.task='i2v' needs sample.image=PATH"),
    ('{"task": "t2v", "num_frames": 16}', "line 2: sample.num_frames=16"),
    ('{"task": "long", "long_window": 9, "height": 20}', "line 2: sample.long_window:"),
])
def test_jobs_file_errors_name_the_line(tmp_path, line, expect):
  """A bad line of sample.jobs_file is refused before anything runs, naming the line."""
  jobs = tmp_path / "jobs.jsonl"
  jobs.write_text('{"task": "t2i", "prompt": "a red circle", "cfg_scale": 2}\n' + line + "\n\n")
  cfg = base_config()
  cfg.sample.jobs_file = str(jobs)
  with pytest.raises(config_check.ConfigError, match="jobs_file=") as e:
    config_check.check(cfg, "sample")
  assert expect in str(e.value), str(e.value)


def test_jobs_file_sets_each_jobs_fields_over_the_commands(tmp_path):
  jobs = tmp_path / "jobs.jsonl"
  jobs.write_text('{"task": "t2i", "prompt": "a red circle", "cfg_scale": 2}\n\n'
                  '{"num_frames": 9, "width": 48, "shift": 3}\n')
  cfg = base_config()
  cfg.sample.jobs_file, cfg.sample.seed = str(jobs), 5
  config_check.check(cfg, "sample")
  (w1, a), (w2, b) = config_check.sample_jobs(cfg)
  assert (w1.endswith("line 1"), w2.endswith("line 3")) == (True, True)
  assert (a.sample.task, a.sample.prompt, a.sample.cfg_scale, a.sample.seed) == (
      "t2i", "a red circle", 2.0, 5)
  assert isinstance(a.sample.cfg_scale, float)
  assert (b.sample.task, b.sample.num_frames, b.sample.width, b.sample.shift) == ("t2v", 9, 48, 3.0)
  assert cfg.sample.task == "t2v" and cfg.sample.width == 32  # the command's config is untouched
  assert config_check.sample_jobs(base_config()) == [("", base_config())]


def test_jobs_file_error_is_one_clear_line(tmp_path):
  jobs = tmp_path / "jobs.jsonl"
  jobs.write_text('{"task": "extend"}\n')
  r = _run("--mode=sample", f"--config.sample.jobs_file={jobs}")
  assert r.returncode == 2, r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert lines == [f"sora_jax: error: sample.jobs_file='{jobs}' line 1: sample.task='extend' "
                   "needs sample.video=PATH"], r.stderr


def _load_config(path):
  spec = importlib.util.spec_from_file_location("config_under_test", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_config_file_setting_an_unknown_key_is_one_clear_line(tmp_path):
  bad = tmp_path / "typo.py"
  bad.write_text("from sora_jax.config_defaults import base_config\n\n\ndef get_config(arg=None):\n"
                 "  cfg = base_config()\n  cfg.train.num_stpes = 3\n  return cfg\n")
  r = subprocess.run([sys.executable, "-m", "sora_jax", f"--config={bad}",
                      "--workdir=/tmp/sj_cli", "--mode=data"], capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 2, r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert lines == [f"sora_jax: error: {bad} line 6 sets 'num_stpes', a key base_config() lacks "
                   '(did you mean "num_steps"?); every key is listed in '
                   "sora_jax/config_defaults.py"], r.stderr
  with pytest.raises(AttributeError, match="num_stpes"):
    _load_config(bad)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
                         + [os.path.join(ROOT, "pretrained", "shapes", "config.py")])
def test_shipped_configs_set_only_known_keys(path):
  """base_config() is locked, so loading a config file proves it invents no key."""
  cfg = _load_config(path)
  assert cfg.is_locked


@pytest.mark.parametrize("mode, first", [
    ("train_vae", "data"), ("encode", "data"), ("train", "encode"), ("sample", "train_vae")])
def test_a_mode_before_its_prerequisite_names_the_missing_step(tmp_path, mode, first):
  """A ConfigError, which the entry point prints as one line (test_bad_input_is_one_clear_line).
  The mode is run as sora_jax.main does (not imported here: its absl flags would collide)."""
  module, fn = {"train_vae": "sora_jax.training.train_vae:run", "encode": "sora_jax.data.encode:run",
                "train": "sora_jax.training.train:run",
                "sample": "sora_jax.sampling.sample:run"}[mode].split(":")
  cfg = base_config()
  config_check.check(cfg, mode)
  with pytest.raises(config_check.ConfigError, match=f"run --mode={first} first"):
    getattr(importlib.import_module(module), fn)(cfg, str(tmp_path))


def test_motion_labels_outside_shapes_world_are_refused(tmp_path):
  """data.motion_labels reads objects from ShapesWorld renders and specs: another data set
  is refused in one line that names the setting to drop."""
  cfg = base_config()
  cfg.data.motion_labels = True
  config_check.check(cfg, "encode")
  cfg.data.name, cfg.data.video_dir = "video_folder", str(tmp_path)
  with pytest.raises(config_check.ConfigError, match="data.motion_labels reads each pixel.*"
                     "set data.motion_labels=False") as e:
    config_check.check(cfg, "encode")
  assert "\n" not in str(e.value)
