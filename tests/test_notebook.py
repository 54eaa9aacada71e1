"""The Colab notebook runs top to bottom with no edits and shows what it promises.

It is executed with nbclient at the tiny sizes (SORA_NB_TINY=1: the TINY overrides of
tests/test_end_to_end.py) in a kernel started from this test's own interpreter, so it
runs in the virtual env scripts/test.sh creates whatever `python3` kernel a machine has.
The kernel inherits SORA_JAX_CACHE from conftest.py, so the entry point's compiles are
shared with tests/test_end_to_end.py (same TINY programs) through the persistent cache.
"""
import ast
import json
import os
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "colab_demo.ipynb")
TASKS = ("t2v", "t2i", "i2v", "extend", "extend_backward", "loop", "interpolate", "edit", "long")


def _assigned_list(source: str, name: str) -> list:
  """The literal list assigned to `name` at the top level of `source`."""
  for node in ast.parse(source).body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
      return ast.literal_eval(node.value)
  raise AssertionError(f"no `{name} = [...]` found")


def _kernel_manager(tmp_path) -> KernelManager:
  """A kernel running this interpreter (the venv with sora_jax installed)."""
  kernels = tmp_path / "kernels"
  spec = kernels / "sora_jax_test"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "sora_jax test", "language": "python"}))
  return KernelManager(kernel_name="sora_jax_test",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))


def test_tiny_settings_are_the_end_to_end_ones():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  settings = next(c.source for c in nb.cells if "TINY_OVERRIDES = [" in c.source)
  with open(os.path.join(ROOT, "tests", "test_end_to_end.py"), encoding="utf-8") as f:
    e2e = f.read()
  assert _assigned_list(settings, "TINY_OVERRIDES") == _assigned_list(e2e, "TINY")


@pytest.mark.slow  # still in the default run: pytest.ini does not deselect `slow`
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  workdir = tmp_path / "workdir"
  monkeypatch.setenv("SORA_NB_TINY", "1")
  monkeypatch.setenv("SORA_NB_WORKDIR", str(workdir))
  # The shipped model is full size: sampling it would double the test's time.
  monkeypatch.setenv("SORA_NB_PRETRAINED", "")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(nb, km=_kernel_manager(tmp_path), timeout=600,
                          resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
  client.execute()  # raises CellExecutionError (with the cell's traceback) if a cell fails

  with open(workdir / "samples" / "samples.json") as f:
    rows = {r["task"]: r for r in json.load(f)}
  assert set(rows) == set(TASKS)
  for r in rows.values():
    assert os.path.getsize(r["path"]) > 0 and (r["height"], r["width"]) == (16, 16)
  assert rows["t2i"]["frames"] == 1 and rows["t2v"]["frames"] == 9
  assert rows["long"]["frames"] == 21
  assert rows["extend"]["frames"] > 9 and rows["extend_backward"]["frames"] > 9

  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
  assert html.count("<video") >= len(TASKS)  # every task's video is shown inline
  pngs = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(pngs) >= 2  # the loss curves and the adherence figure
  assert any("image/gif" in o.get("data", {}) for o in outputs)
  with open(workdir / "eval.json") as f:
    assert "adherence" in json.load(f)
