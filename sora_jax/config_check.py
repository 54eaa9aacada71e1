"""Validation of a config before any work (and any compile) starts.

Every problem is a `ConfigError` whose message is one line naming the field, the bad
value and what is allowed, so the entry point can print it and exit.
"""
import copy
import io
import json
import re

from sora_jax import paths
from sora_jax.data.shapes_world import SWAPS

MODES = ("data", "train_vae", "encode", "train", "sample", "eval", "benchmark", "compile")
TASKS = ("t2v", "t2i", "i2v", "extend", "extend_backward", "loop", "interpolate", "edit", "long")
SOLVERS = ("euler", "heun")
ATTENTION = ("xla", "cudnn", "splash", "blockwise", "ulysses", "ring")
REMAT = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16")
COND_MASKS = ("none", "first", "first_k", "last_k", "first_last", "random")
LORA_TARGETS = ("q", "k", "v", "o", "ffn")
COMPILE_PROGRAMS = ("train", "sample")
TEXT_FIELDS = ("caption", "prompt", "both")  # data.caption_field, diffusion.binding_field
BINDING_GRADS = ("all", "text", "text_tokens", "cross_attn")  # diffusion.binding_grad
BINDING_LOSSES = ("hinge", "match")  # diffusion.binding_loss
# sample.* fields that hold for a whole --mode=sample run: a jobs-file line may not set them.
RUN_SAMPLE_FIELDS = ("jobs_file", "use_ema", "output_dir")


class ConfigError(ValueError):
  """A config value that cannot work; the message says what is allowed."""


def missing_step(what: str, mode: str) -> ConfigError:
  """The error for an input that an earlier mode writes, naming that mode."""
  return ConfigError(f"{what}; run --mode={mode} first (with the same --config and --workdir)")


def _one_of(name, value, allowed):
  if value not in allowed:
    raise ConfigError(f"{name}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def check_frames(name: str, frames: int) -> None:
  """Frames must be 1+4k: the causal VAE keeps the first frame alone."""
  if frames < 1 or (frames - 1) % 4:
    lo = max(1, (frames - 1) // 4 * 4 + 1)
    raise ConfigError(
        f"{name}={frames} frames is not 1+4k (the causal VAE compresses time x4 after the "
        f"first frame); use {lo} or {lo + 4}")


def parse_buckets(spec: str) -> list[tuple[int, int, int]]:
  """'17x32x32,1x32x32' -> [(17, 32, 32), (1, 32, 32)], each checked."""
  out = []
  for item in [s.strip() for s in spec.split(",") if s.strip()]:
    parts = item.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
      raise ConfigError(
          f"data.buckets item {item!r} is not FRAMESxHEIGHTxWIDTH (e.g. '17x32x32,1x32x32')")
    t, h, w = (int(p) for p in parts)
    check_frames(f"data.buckets {item}", t)
    if h < 16 or w < 16:
      raise ConfigError(f"data.buckets item {item!r}: height and width must be >= 16")
    out.append((t, h, w))
  if not out:
    raise ConfigError("data.buckets is empty; give at least one FRAMESxHEIGHTxWIDTH")
  return out


def init_from_dir(path: str) -> str:
  """train.init_from (a workdir or its checkpoints/ folder) -> the DiT checkpoints folder."""
  sub = paths.join(path, "checkpoints")
  return sub if paths.path(sub).is_dir() else path


def parse_bucket_weights(spec: str, num_buckets: int) -> list[float] | None:
  """data.bucket_weights '3,1' -> [0.75, 0.25] (one per data.buckets entry); '' -> None."""
  if not spec.strip():
    return None
  try:
    weights = [float(x) for x in spec.split(",")]
  except ValueError as e:
    raise ConfigError(f"data.bucket_weights={spec!r} is not comma-separated numbers") from e
  if len(weights) != num_buckets or min(weights) < 0 or sum(weights) <= 0:
    raise ConfigError(
        f"data.bucket_weights={spec!r} needs {num_buckets} non-negative weights (one per "
        "data.buckets entry) with a positive sum, or '' to sample buckets by size")
  return [w / sum(weights) for w in weights]


def eval_timesteps(cfg) -> tuple[float, ...]:
  """train.eval_timesteps as floats in (0, 1]."""
  try:
    ts = tuple(float(x) for x in str(cfg.train.eval_timesteps).split(","))
  except ValueError:
    ts = ()
  if not ts or not all(0.0 < x <= 1.0 for x in ts):
    raise ConfigError(f"train.eval_timesteps={cfg.train.eval_timesteps!r} must be comma-separated "
                      "noise levels in (0, 1], e.g. '0.1,0.3,0.5,0.7,0.9'")
  return ts


def parse_weights(spec: str, names) -> dict[str, float]:
  """'a=0.5,b=0.5' -> {'a': 0.5, 'b': 0.5}, names checked, normalised to sum 1."""
  out = {}
  for item in [s.strip() for s in spec.split(",") if s.strip()]:
    if "=" not in item:
      raise ConfigError(f"{item!r} is not name=probability")
    k, v = item.split("=", 1)
    _one_of("conditioning mask", k.strip(), names)
    out[k.strip()] = float(v)
  total = sum(out.values())
  if total <= 0:
    raise ConfigError(f"probabilities {spec!r} sum to {total}; they must be positive")
  return {k: v / total for k, v in out.items()}


def vae_spatial_factor(cfg) -> int:
  """Pixels per latent pixel along height and width (WanVAE.spatial_factor, from the config)."""
  return 2 ** (len(cfg.vae.dim_mult) - 1)


def vae_temporal_factor(cfg) -> int:
  """Frames per latent frame after the first (WanVAE.temporal_factor, from the config)."""
  return 2 ** sum(bool(x) for x in cfg.vae.temporal_downsample)


def latent_size(cfg, frames: int, height: int, width: int) -> tuple[int, int, int]:
  """(latent frames, latent height, latent width) of a pixel clip under cfg's VAE."""
  spatial = vae_spatial_factor(cfg)
  return 1 + (frames - 1) // vae_temporal_factor(cfg), height // spatial, width // spatial


def latent_grid_error(cfg, frames: int, height: int, width: int) -> str | None:
  """Why (frames, height, width) cannot be sampled by this model, or None."""
  spatial = vae_spatial_factor(cfg)
  temporal = vae_temporal_factor(cfg)
  pt, ph, pw = cfg.dit.patch_size
  if (frames - 1) % temporal:
    return f"frames={frames} must be 1+{temporal}k for this VAE"
  lt = 1 + (frames - 1) // temporal
  for name, size in (("height", height), ("width", width)):
    if size % (spatial * (ph if name == "height" else pw)):
      step = spatial * (ph if name == "height" else pw)
      return (f"{name}={size} is not a multiple of {step} (VAE x{spatial} times patch); "
              f"use {size // step * step or step} or {(size // step + 1) * step}")
  if lt % pt:
    return f"frames={frames} gives {lt} latent frames, not a multiple of the time patch {pt}"
  return None


def check(cfg, mode: str) -> None:
  """Raises ConfigError for the first field that cannot work in `mode`."""
  _one_of("--mode", mode, MODES)
  _one_of("data.name", cfg.data.name, ("shapes_world", "video_folder"))
  parse_bucket_weights(cfg.data.bucket_weights, len(parse_buckets(cfg.data.buckets)))
  if cfg.data.num_train < 1 or cfg.data.num_val < 0:
    raise ConfigError(f"data.num_train={cfg.data.num_train} must be >= 1 and "
                      f"data.num_val={cfg.data.num_val} >= 0")
  if not 0.0 <= cfg.data.val_fraction < 1.0:
    raise ConfigError(f"data.val_fraction={cfg.data.val_fraction} must be in [0, 1)")
  if cfg.data.clips_per_video < 0 or cfg.data.build_workers < 0 or not cfg.data.fps > 0:
    raise ConfigError("data.clips_per_video and data.build_workers must be >= 0 and "
                      "data.fps > 0")
  if cfg.data.name == "video_folder" and mode == "data" and not cfg.data.video_dir:
    raise ConfigError("data.name='video_folder' needs data.video_dir=FOLDER of videos + captions")
  if cfg.data.video_dir and not paths.path(cfg.data.video_dir).is_dir():
    raise ConfigError(f"data.video_dir={cfg.data.video_dir!r} is not a folder")
  _one_of("data.caption_field", cfg.data.caption_field, TEXT_FIELDS)
  if cfg.data.batch_size < 1:
    raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be >= 1")
  if len(cfg.vae.temporal_downsample) != len(cfg.vae.dim_mult) - 1:
    raise ConfigError(
        f"vae.temporal_downsample has {len(cfg.vae.temporal_downsample)} entries; it needs one "
        f"per downsampling (len(vae.dim_mult) - 1 = {len(cfg.vae.dim_mult) - 1})")
  if cfg.vae_train.max_frames:
    check_frames("vae_train.max_frames", cfg.vae_train.max_frames)
  crop, sf = cfg.vae_train.crop_size, vae_spatial_factor(cfg)
  if crop < 0 or crop % sf:
    raise ConfigError(f"vae_train.crop_size={crop} must be 0 (whole frames) or a positive "
                      f"multiple of the VAE's spatial factor {sf} (e.g. {2 * sf})")
  _one_of("text.encoder", cfg.text.encoder, ("minilm", "umt5", "t5"))
  _check_clauses(cfg)
  if cfg.dit.dim % cfg.dit.num_heads:
    raise ConfigError(f"dit.dim={cfg.dit.dim} is not divisible by dit.num_heads={cfg.dit.num_heads}")
  if (cfg.dit.dim // cfg.dit.num_heads) % 2:
    raise ConfigError("dit.dim / dit.num_heads must be even (3D RoPE rotates pairs)")
  _one_of("dit.attention", cfg.dit.attention, ATTENTION)
  if cfg.dit.attention_block < 1:
    raise ConfigError(f"dit.attention_block={cfg.dit.attention_block} must be >= 1 (tokens)")
  if cfg.dit.scan_unroll < 0:
    raise ConfigError(f"dit.scan_unroll={cfg.dit.scan_unroll}: give a number of layers per scan "
                      "iteration, or 0 for all of them")
  _one_of("dit.remat_policy", cfg.dit.remat_policy, REMAT)
  _one_of("dit.dtype", cfg.dit.dtype, DTYPES)
  _one_of("dit.param_dtype", cfg.dit.param_dtype, DTYPES)
  _one_of("diffusion.prediction", cfg.diffusion.prediction, ("x0", "v"))
  parse_weights(cfg.diffusion.cond_masks, COND_MASKS)
  d = cfg.diffusion
  if not 0.0 < d.x0_loss_t_clip <= 1.0:
    raise ConfigError(f"diffusion.x0_loss_t_clip={d.x0_loss_t_clip} must be in (0, 1] "
                      "(0.05: velocity loss, 1: x0 MSE)")
  if d.t_std <= 0:
    raise ConfigError(f"diffusion.t_std={d.t_std} must be > 0 (logit-normal spread)")
  if not 0.0 <= d.t_top_frac < 1.0 or not 0.0 <= d.t_top < 1.0:
    raise ConfigError(f"diffusion.t_top_frac={d.t_top_frac} and t_top={d.t_top} must be in "
                      "[0, 1) (a share of samples, and the lowest noise level they draw)")
  if d.shift <= 0:
    raise ConfigError(f"diffusion.shift={d.shift} must be > 0 (1 = no shift)")
  if d.shift_base_tokens < 1:
    raise ConfigError(f"diffusion.shift_base_tokens={d.shift_base_tokens} must be >= 1")
  if not 0.0 <= d.caption_dropout < 1.0:
    raise ConfigError(f"diffusion.caption_dropout={d.caption_dropout} must be in [0, 1)")
  if d.binding_weight < 0 or d.binding_margin <= 0 or not 0.0 <= d.binding_t_min < 1.0:
    raise ConfigError(f"diffusion.binding_weight={d.binding_weight} must be >= 0 (0: off), "
                      f"binding_margin={d.binding_margin} > 0 and binding_t_min="
                      f"{d.binding_t_min} in [0, 1)")
  _one_of("data.binding_swap", cfg.data.binding_swap, SWAPS)
  _one_of("diffusion.binding_field", d.binding_field, TEXT_FIELDS)
  _one_of("diffusion.binding_grad", d.binding_grad, BINDING_GRADS)
  _one_of("diffusion.binding_loss", d.binding_loss, BINDING_LOSSES)
  if d.binding_loss == "match" and not cfg.dit.match_head:
    raise ConfigError("diffusion.binding_loss='match' trains the DiT's matching head, which "
                      "this config lacks; set dit.match_head=True (or binding_loss='hinge')")
  if not 0 <= cfg.dit.motion_head_layer <= cfg.dit.num_layers:
    raise ConfigError(f"dit.motion_head_layer={cfg.dit.motion_head_layer}: give a number of "
                      f"blocks in 1..{cfg.dit.num_layers} (dit.num_layers), or 0 for all of them")
  if d.motion_weight < 0:
    raise ConfigError(f"diffusion.motion_weight={d.motion_weight}: use a weight >= 0 (0: off)")
  if not 0.0 <= d.motion_t_min < 1.0:
    raise ConfigError(f"diffusion.motion_t_min={d.motion_t_min}: use a noise level in [0, 1)")
  if d.motion_weight > 0 and not cfg.dit.motion_head:
    raise ConfigError("diffusion.motion_weight trains the DiT's motion head, which this config "
                      "lacks; set dit.motion_head=True (or diffusion.motion_weight=0)")
  if d.binding_loss == "match" and d.binding_grad != "all":
    raise ConfigError(f"diffusion.binding_loss='match' with binding_grad={d.binding_grad!r}: "
                      "the matching head is outside that group and would never train; set "
                      "binding_grad='all' (or binding_loss='hinge')")
  if d.binding_grad == "cross_attn" and cfg.dit.joint_attention:
    raise ConfigError("diffusion.binding_grad='cross_attn' names the cross-attention, which "
                      "dit.joint_attention's blocks do not have (one attention over video and "
                      "text); use binding_grad='text' (the text stream) or 'all'")
  if (d.binding_weight > 0 and "both" not in (d.binding_field, cfg.data.caption_field)
      and d.binding_field != cfg.data.caption_field):
    raise ConfigError(f"diffusion.binding_field={d.binding_field!r} names a text that "
                      f"data.caption_field={cfg.data.caption_field!r} never trains with, so the "
                      f"contrast would never apply; set binding_field to "
                      f"{cfg.data.caption_field!r} or 'both'")
  if (d.binding_weight > 0 and cfg.data.binding_swap == "motion"
      and "caption" in (d.binding_field, cfg.data.caption_field)):
    raise ConfigError(f"data.binding_swap='motion' makes negatives of prompts only (a caption "
                      f"words motion with start positions), so diffusion.binding_field="
                      f"{d.binding_field!r} with data.caption_field={cfg.data.caption_field!r} "
                      f"would never apply the contrast; set both to 'prompt' or 'both'")
  if cfg.data.binding_negatives and cfg.data.name != "shapes_world":
    raise ConfigError(f"data.binding_negatives needs ShapesWorld specs (which name the objects), "
                      f"not data.name={cfg.data.name!r}; set data.binding_negatives=False")
  if cfg.data.motion_labels and (cfg.data.name != "shapes_world" or cfg.weights):
    raise ConfigError("data.motion_labels reads each pixel's object from a ShapesWorld render and "
                      "its spec (data.name='shapes_world', our own VAE); set "
                      "data.motion_labels=False")
  for k in ("num_steps", "log_every", "checkpoint_every"):
    if cfg.train[k] < 1:
      raise ConfigError(f"train.{k}={cfg.train[k]} must be >= 1")
  if cfg.data.train_records < 0:
    raise ConfigError(f"data.train_records={cfg.data.train_records} must be >= 0 (0: all records)")
  if cfg.train.eval_every < 0 or cfg.train.eval_clips < 1:
    raise ConfigError(f"train.eval_every={cfg.train.eval_every} must be >= 0 (0: at every "
                      f"checkpoint) and train.eval_clips={cfg.train.eval_clips} >= 1")
  eval_timesteps(cfg)
  for k in ("data", "fsdp", "sequence", "tensor"):
    if cfg.mesh[k] == 0 or cfg.mesh[k] < -1:
      raise ConfigError(f"mesh.{k}={cfg.mesh[k]} must be a positive size or -1 (fill)")
  if cfg.weights and not paths.path(cfg.weights).is_dir():
    raise ConfigError(f"weights={cfg.weights!r} is not a folder; download a Wan 2.1 diffusers "
                      "folder first (docs/open_weights.md)")
  if cfg.train.init_from:
    if cfg.weights:
      raise ConfigError(f"train.init_from={cfg.train.init_from!r} and weights={cfg.weights!r} "
                        "both give the DiT's starting weights: set only one")
    if mode == "train" and not paths.path(init_from_dir(cfg.train.init_from)).is_dir():
      raise ConfigError(f"train.init_from={cfg.train.init_from!r} has no DiT checkpoints "
                        f"folder ({init_from_dir(cfg.train.init_from)}): give a sora_jax "
                        "workdir, e.g. pretrained/shapes")
  if cfg.train.lora_rank < 0 or cfg.train.lora_alpha <= 0:
    raise ConfigError(f"train.lora_rank={cfg.train.lora_rank} must be >= 0 (0: no LoRA) and "
                      f"train.lora_alpha={cfg.train.lora_alpha} > 0")
  if cfg.train.lora_rank > 0:
    targets = [t.strip() for t in cfg.train.lora_targets.split(",") if t.strip()]
    if not targets or any(t not in LORA_TARGETS for t in targets):
      raise ConfigError(f"train.lora_targets={cfg.train.lora_targets!r}: choose a comma-separated "
                        f"subset of {', '.join(LORA_TARGETS)}")
    if not cfg.weights and mode in ("train", "sample", "eval"):
      raise ConfigError("train.lora_rank > 0 adapts open weights: set --config.weights=FOLDER "
                        "(docs/open_weights.md), or train.lora_rank=0")
  if mode == "benchmark":
    b = cfg.benchmark
    check_frames("benchmark.num_frames", b.num_frames)
    err = latent_grid_error(cfg, b.num_frames, b.height, b.width)
    if err:
      raise ConfigError(f"benchmark: {err}")
    if b.steps < 1 or b.warmup < 0 or b.batch_size < 1 or b.matmul_size < 128:
      raise ConfigError(f"benchmark.steps={b.steps} (>= 1), .warmup={b.warmup} (>= 0), "
                        f".batch_size={b.batch_size} (>= 1) and .matmul_size={b.matmul_size} "
                        "(>= 128) are out of range")
  if mode == "compile":
    _check_compile(cfg)
  if mode == "sample":
    for where, job in sample_jobs(cfg):
      try:
        _check_sample(job, mode)
      except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None
  elif mode == "eval":
    _check_sample(cfg, mode)


def _check_clauses(cfg) -> None:
  k = cfg.text.clause_tokens
  if not isinstance(k, int) or k < 0:
    raise ConfigError(f"text.clause_tokens={k!r}: give the number of clause slots (>= 0; 0 = none)")
  split = cfg.text.clause_split
  try:
    groups = re.compile(split).groups
  except re.error as e:
    raise ConfigError(f"text.clause_split={split!r} is not a regular expression ({e})") from e
  if groups:
    raise ConfigError(f"text.clause_split={split!r} has capturing groups, whose text would "
                      "become clauses; write them as (?:...)")


def compile_programs(spec: str) -> list[str]:
  """compile.programs ('train,sample') -> the program names, checked."""
  names = [p.strip() for p in spec.split(",") if p.strip()]
  if not names or any(p not in COMPILE_PROGRAMS for p in names):
    raise ConfigError(f"compile.programs={spec!r}: choose a comma-separated subset of "
                      f"{', '.join(COMPILE_PROGRAMS)}")
  return names


def _check_compile(cfg) -> None:
  c = cfg.compile
  if not re.fullmatch(r"[\w]+:\d+(x\d+)*", c.topology or ""):
    raise ConfigError(f"compile.topology={c.topology!r} is not a TPU topology name such as "
                      "v5:4x4x8 (v5p), v5e:16x16 or v6e:16x16")
  if c.num_slices < 1 or c.search_top < 1:
    raise ConfigError(f"compile.num_slices={c.num_slices} and compile.search_top={c.search_top} "
                      "must be >= 1")
  programs = compile_programs(c.programs)
  if c.bucket:
    parse_buckets(c.bucket)
  if "sample" in programs:
    _check_sample(cfg, "compile")


def _check_sample(cfg, mode: str) -> None:
  """The sample.* fields of one sampling job (`mode` sample) or of eval's samples."""
  s = cfg.sample
  _one_of("sample.task", s.task, TASKS)
  _one_of("sample.solver", s.solver, SOLVERS)
  check_frames("sample.num_frames", s.num_frames)
  if s.steps < 1:
    raise ConfigError(f"sample.steps={s.steps} must be >= 1")
  if s.shift == 0:
    raise ConfigError("sample.shift=0 is not a shift; use > 0, or < 0 for the training rule")
  if not 0.0 < s.strength <= 1.0:
    raise ConfigError(f"sample.strength={s.strength} must be in (0, 1]")
  if s.task == "long":  # any length: the window is what the model sees.
    err = latent_grid_error(cfg, s.long_window, s.height, s.width)
    if err:
      raise ConfigError(f"sample.long_window: {err}")
  else:
    frames = 1 if s.task == "t2i" else s.num_frames  # t2i always renders one frame.
    err = latent_grid_error(cfg, frames, s.height, s.width)
    if err:
      raise ConfigError(f"sample: {err}")
  if s.prompts_file and not paths.path(s.prompts_file).is_file():
    raise ConfigError(f"sample.prompts_file={s.prompts_file!r} does not exist")
  needs = {"i2v": ("image",), "interpolate": ("image", "end_image"),
           "extend": ("video",), "extend_backward": ("video",), "edit": ("video",)}
  if s.task == "loop" and s.video:
    raise ConfigError("sample.task='loop' starts from sample.image=PATH (or samples its first "
                      "frame); it does not read sample.video")
  if mode == "sample":
    for field in needs.get(s.task, ()):
      if not s[field]:
        raise ConfigError(f"sample.task={s.task!r} needs sample.{field}=PATH")
      if not paths.path(s[field]).is_file():
        raise ConfigError(f"sample.{field}={s[field]!r} does not exist")


def _json_value(where: str, key: str, default, value):
  """`value` (from JSON) for the sample field `key`, checked against its default's type."""
  if isinstance(default, bool) or isinstance(value, bool):
    ok = isinstance(default, bool) and isinstance(value, bool)
  elif isinstance(default, float):
    ok = isinstance(value, (int, float))  # 1 for 1.0
  else:
    ok = isinstance(value, type(default))
  if not ok:
    raise ConfigError(f"{where}: sample.{key}={value!r} must be {type(default).__name__}, "
                      f"like its default {default!r}")
  return float(value) if isinstance(default, float) else value


def sample_jobs(cfg) -> list:
  """The sampling jobs of one `--mode=sample` run as [(where, config)].

  Without `sample.jobs_file` that is the command's own config ("" for where). With it,
  one copy of the config per non-blank line of the file, the line's JSON object of
  sample.* fields set over the command's (paths as on the command line), and where =
  "sample.jobs_file=PATH line N" to prefix that job's errors.
  """
  path = cfg.sample.jobs_file
  if not path:
    return [("", cfg)]
  if not paths.path(path).is_file():
    raise ConfigError(f"sample.jobs_file={path!r} does not exist")
  jobs = []
  with io.StringIO(paths.read_text(path)) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"sample.jobs_file={path!r} line {n}"
      try:
        fields = json.loads(line)
      except json.JSONDecodeError as e:
        raise ConfigError(f"{where} is not JSON ({e.msg}); write one object a line, e.g. "
                          '{"task": "t2i", "prompt": "a red circle"}') from None
      if not isinstance(fields, dict):
        raise ConfigError(f"{where} is {type(fields).__name__}, not a JSON object of sample "
                          'fields, e.g. {"task": "t2i", "prompt": "a red circle"}')
      job = copy.deepcopy(cfg)
      for key, value in fields.items():
        if key not in job.sample:
          raise ConfigError(f"{where}: unknown sample field {key!r}; the sample.* fields are "
                            "listed in sora_jax/config_defaults.py")
        if key in RUN_SAMPLE_FIELDS:
          raise ConfigError(f"{where}: sample.{key} holds for the whole run; set it on the "
                            "command line, not in the jobs file")
        job.sample[key] = _json_value(where, key, job.sample[key], value)
      jobs.append((where, job))
  if not jobs:
    raise ConfigError(f"sample.jobs_file={path!r} has no jobs (one JSON object a line)")
  return jobs
