"""The one entry point: `python -m sora_jax --config=configs/X.py --workdir=DIR --mode=MODE`.

Any config value can be overridden as `--config.a.b=value`; an unknown key, mode or a
value that cannot work is a one-line error before anything is built or compiled.
Each mode lives in its own module and is imported only when chosen, so `--mode=data`
never pays for the model code.
"""
import ast
import importlib
import importlib.util
import os
import re
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from sora_jax import config_check, paths

# mode -> "module:function"; each function takes (config, workdir).
MODES = {
    "data": "sora_jax.data.build:run",
    "train_vae": "sora_jax.training.train_vae:run",
    "encode": "sora_jax.data.encode:run",
    "train": "sora_jax.training.train:run",
    "sample": "sora_jax.sampling.sample:run",
    "eval": "sora_jax.eval.evaluate:run",
    "benchmark": "sora_jax.training.benchmark:run",
    "compile": "sora_jax.parallel.aot:run",
}
assert tuple(MODES) == config_check.MODES

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Working directory: data, checkpoints, samples.")
_MODE = flags.DEFINE_enum("mode", "train", list(MODES), "What to do.")


def maybe_initialize_distributed() -> None:
  """Multi-host: joins the job described by JAX_COORDINATOR_ADDRESS/NUM_PROCESSES/PROCESS_ID."""
  addr = os.environ.get("JAX_COORDINATOR_ADDRESS")
  nproc = os.environ.get("JAX_NUM_PROCESSES")
  pid = os.environ.get("JAX_PROCESS_ID")
  if addr and nproc and pid:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize(
        coordinator_address=addr, num_processes=int(nproc), process_id=int(pid))
    logging.info("jax.distributed: process %s of %s, %d global devices",
                 pid, nproc, jax.device_count())
  elif addr or nproc or pid:
    raise config_check.ConfigError(
        "multi-host needs all of JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID")


def enable_compilation_cache(workdir: str) -> None:
  """Persistent XLA cache: repeated runs (and tests) skip recompiling identical programs."""
  import jax  # pylint: disable=g-import-not-at-top
  cache = os.environ.get("SORA_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                        "sora_jax_xla"))
  jax.config.update("jax_compilation_cache_dir", cache)
  # Programs compiling faster than this are not cached (SORA_JAX_CACHE_MIN_SECS; the tests
  # set 0 so their many tiny subprocess compiles are shared).
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ.get("SORA_JAX_CACHE_MIN_SECS", "1.0")))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  del workdir


def resolve_mode(mode: str):
  module, fn = MODES[mode].split(":")
  return getattr(importlib.import_module(module), fn)


def main(argv) -> None:
  if len(argv) > 1:
    raise config_check.ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  cfg = _CONFIG.value
  if cfg is None:
    raise config_check.ConfigError("--config=configs/NAME.py is required")
  if not _WORKDIR.value:
    raise config_check.ConfigError("--workdir=DIR is required")
  config_check.check(cfg, _MODE.value)
  if not any(a.startswith(("--verbosity", "-v=")) for a in sys.argv):
    logging.set_verbosity(logging.WARNING)  # progress lines are printed; library INFO is noise
  maybe_initialize_distributed()
  enable_compilation_cache(_WORKDIR.value)
  paths.path(_WORKDIR.value).mkdir(parents=True, exist_ok=True)
  resolve_mode(_MODE.value)(cfg, _WORKDIR.value)


def _main_with_clear_errors(argv):
  try:
    main(argv)
  except config_check.ConfigError as e:
    print(f"sora_jax: error: {e}", file=sys.stderr)
    sys.exit(2)


_HELP_FLAGS = ("-h", "-help", "--help", "--helpshort", "-?")


def _mode_summary(mode: str) -> str:
  """The first line of the mode's module docstring, read without importing the module."""
  module = MODES[mode].split(":")[0]
  spec = importlib.util.find_spec(module)
  with open(spec.origin, encoding="utf-8") as f:
    doc = ast.get_docstring(ast.parse(f.read())) or ""
  line = doc.splitlines()[0] if doc else ""
  return re.sub(r"^`--mode=\w+`:\s*", "", line)


def usage() -> str:
  """What `--help` prints: the synopsis, the flags, the override syntax and the modes."""
  modes = "\n".join(f"  {m:<10} {_mode_summary(m)}" for m in MODES)
  return f"""usage: python -m sora_jax --config=CONFIG.py[:ARG] --workdir=DIR --mode=MODE [--config.SECTION.FIELD=VALUE ...]
       (or the console script sora-jax with the same flags)

Builds data, trains the video VAE and the diffusion transformer, samples and evaluates.

flags:
  --config=FILE.py      config file, e.g. configs/shapes_tiny.py (the CPU demo) or
                        pretrained/shapes/config.py (the shipped model)
  --workdir=DIR         where data, checkpoints, samples and metrics are written
  --mode=MODE           what to do (default: {_MODE.default}); one of the modes below
  --config.SECTION.FIELD=VALUE
                        overrides one config value, e.g. --config.train.num_steps=100
                        --config.sample.prompt="a red circle moving left"; tuples as
                        --config.dit.patch_size="(1, 2, 2)"

modes (a new model runs data, train_vae, encode, train, then sample and eval):
{modes}

Every config field, its default and what it does: docs/configuration.md.
Each mode's exact command: docs/quickstart.md. All absl flags: --helpfull."""


def _flags_parser(argv):
  """absl's parser, with flag/config errors printed as one line instead of a traceback."""
  if any(a in _HELP_FLAGS for a in argv[1:]):
    print(usage())
    sys.exit(0)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"sora_jax: error: {e}", file=sys.stderr)
    sys.exit(2)
  except (KeyError, AttributeError, ValueError, TypeError) as e:
    in_file = _config_file_error(e, argv)
    if in_file:
      print(f"sora_jax: error: {in_file}", file=sys.stderr)
      sys.exit(2)
    print(f"sora_jax: error: {_override_error(e, argv)}", file=sys.stderr)
    sys.exit(2)


def _override_error(e: Exception, argv) -> str:
  """One line for a bad `--config.a.b=v` (ml_collections raises KeyError/AttributeError,
  possibly wrapping each other, with a repr'd key and a 'Did you mean' on a second line)."""
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  text = str(e.args[0]) if e.args else str(e)
  first = text.splitlines()[0].strip().strip("'\"")
  lookup = re.search(r"Attempting to lookup: ([\w.]+)", text)  # a key below a non-dict value
  if lookup:
    first = lookup.group(1)
  hint = re.search(r'Did you mean "([\w.]+)"', text)
  hint = f' (did you mean "{hint.group(1)}"?)' if hint else ""
  flag = lambda a: a.split("=", 1)[0]
  bad = [a for a in argv if a.startswith("--config.")
         and (first in flag(a).split(".") or flag(a) == f"--config.{first}")]
  where = f"{bad[0]}: " if bad else ""
  return (f"{where}unknown or invalid config key {first!r}{hint}; every key and its default "
          "is listed in docs/configuration.md")


def _config_file_error(e: Exception, argv) -> str | None:
  """One line for a config file that sets a key base_config() lacks (the config is locked),
  naming the file, line and key; None when `e` was not raised by that."""
  found = re.search(r'Key "(\w+)" does not exist and cannot be added since the config is locked',
                    str(e))
  files = [a.split("=", 1)[1].split(":")[0] for a in argv if a.startswith("--config=")]
  if not found or not files:
    return None
  frames = [f for f in traceback.extract_tb(e.__traceback__)
            if os.path.basename(f.filename) == os.path.basename(files[0])]
  if not frames:
    return None
  hint = re.search(r'Did you mean "(\w+)"', str(e))
  hint = f' (did you mean "{hint.group(1)}"?)' if hint else ""
  return (f"{files[0]} line {frames[-1].lineno} sets {found.group(1)!r}, a key base_config() "
          f"lacks{hint}; every key is listed in sora_jax/config_defaults.py")


def run() -> None:
  """Console script `sora-jax` and `python -m sora_jax`."""
  app.run(_main_with_clear_errors, flags_parser=_flags_parser)


if __name__ == "__main__":
  run()
