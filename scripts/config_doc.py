"""Generates docs/configuration.md from sora_jax/config_defaults.py and configs/*.py.

Every field's documentation is its comment in config_defaults.py (the line(s) just above
the assignment and the comment at its end); defaults are the evaluated `base_config()`;
each config file contributes its docstring and the fields it changes.

  .venv/bin/python scripts/config_doc.py          # rewrites docs/configuration.md
  .venv/bin/python scripts/config_doc.py --check  # exit 1 if the committed file is stale

tests/test_docs.py runs the check, so the page cannot drift from the code.
"""
import argparse
import ast
import glob
import importlib.util
import io
import os
import re
import sys
import tokenize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS = os.path.join(ROOT, "sora_jax", "config_defaults.py")
OUTPUT = os.path.join(ROOT, "docs", "configuration.md")
sys.path.insert(0, ROOT)

from sora_jax import config_defaults  # noqa: E402  pylint: disable=g-import-not-at-top


def _comments(source: str) -> dict[int, tuple[str, bool]]:
  """line -> (comment text without '#', whether the comment is the whole line)."""
  out = {}
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      whole = not tok.line[:tok.start[1]].strip()
      out[tok.start[0]] = (tok.string.lstrip("#").strip(), whole)
  return out


def _key(target) -> str | None:
  """'data.buckets' for the target `cfg.data.buckets`; None for anything else."""
  parts = []
  while isinstance(target, ast.Attribute):
    parts.append(target.attr)
    target = target.value
  if isinstance(target, ast.Name) and target.id == "cfg" and parts:
    return ".".join(reversed(parts))
  return None


def _is_banner(text: str) -> bool:
  return text.startswith("---")


def parse_defaults(source: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
  """([(key, comment)] in source order, {section: banner title}) of base_config()."""
  comments = _comments(source)
  fn = next(n for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.FunctionDef) and n.name == "base_config")
  fields, banners = [], {}
  for stmt in fn.body:
    if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
      continue
    key = _key(stmt.targets[0])
    if key is None:
      continue
    above, line = [], stmt.lineno - 1
    while line in comments and comments[line][1]:
      above.insert(0, comments[line][0])
      line -= 1
    banner = [c.strip("- ") for c in above if _is_banner(c)]
    above = [c for c in above if not _is_banner(c)]
    if isinstance(stmt.value, ast.Call) and getattr(stmt.value.func, "id", "") == "C":
      if banner:
        banners[key] = banner[-1]
      continue
    trailing = comments.get(stmt.lineno, ("", True))
    text = " ".join(above + ([trailing[0]] if not trailing[1] else []))
    fields.append((key, text))
  return fields, banners


def flatten(cfg, prefix: str = "") -> dict:
  """ConfigDict -> {'a.b': value} of its leaves."""
  out = {}
  for k, v in cfg.items():
    if hasattr(v, "items"):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def _value(v) -> str:
  text = f"`{v!r}`" if not isinstance(v, tuple) or v else "`()`"
  return text.replace("|", "\\|")


def _anchor(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
  kept = "".join(c for c in heading.lower() if c.isalnum() or c in " _-")
  return "#" + kept.replace(" ", "-")


def _heading(section: str, banners: dict[str, str]) -> str:
  title = f"`{section}`" if section else "top level"
  banner = banners.get(section)
  return title + (f" ({banner})" if banner and banner != section else "")


def _cell(text: str) -> str:
  return text.replace("|", "\\|") if text else ""


def load_configs() -> list[tuple[str, str, dict, dict[str, dict]]]:
  """[(path relative to the repo, docstring, flattened config, {variant: flattened})].

  Variants are the `configs/NAME.py:VARIANT` arguments the config's docstring shows.
  """
  out = []
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"_config_doc_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with open(path, encoding="utf-8") as f:
      doc = ast.get_docstring(ast.parse(f.read())) or ""
    variants = dict.fromkeys(re.findall(rf"configs/{re.escape(name)}\.py:(\w+)", doc))
    out.append((os.path.relpath(path, ROOT), doc, flatten(module.get_config()),
                {v: flatten(module.get_config(v)) for v in variants}))
  return out


def _changes(flat: dict, base: dict, order: list[str]) -> list[tuple[str, object]]:
  """(key, value) of `flat` that differ from `base`, in `order` then any new keys."""
  keys = [k for k in order if k in flat] + sorted(set(flat) - set(order))
  return [(k, flat[k]) for k in keys if base.get(k, object()) != flat[k]]


def render() -> str:
  with open(DEFAULTS, encoding="utf-8") as f:
    fields, banners = parse_defaults(f.read())
  defaults = flatten(config_defaults.base_config())
  documented = {k for k, _ in fields}
  missing = sorted(set(defaults) - documented)
  if missing:
    raise SystemExit(f"config_doc: keys not assigned as `cfg.a.b = value` in base_config(): "
                     f"{missing}")
  configs = load_configs()
  undocumented = [k for k, text in fields if not text]
  if undocumented:
    print(f"config_doc: {len(undocumented)} fields have no comment in config_defaults.py: "
          f"{', '.join(undocumented)}", file=sys.stderr)
  configs = load_configs()
  sections: dict[str, list[tuple[str, str]]] = {}
  for key, text in fields:
    sections.setdefault(key.split(".")[0] if "." in key else "", []).append((key, text))
  lines = [
      "# Configuration reference",
      "",
      "<!-- Generated by scripts/config_doc.py from sora_jax/config_defaults.py and",
      "     configs/*.py; do not edit by hand: edit those files and rerun",
      "     `.venv/bin/python scripts/config_doc.py` (tests/test_docs.py checks it). -->",
      "",
      "Every run starts from `base_config()` in `sora_jax/config_defaults.py`; a config file",
      "under `configs/` changes what its target needs, and any field can be overridden on",
      "the command line:",
      "",
      "```bash",
      "python -m sora_jax --config=configs/shapes_tiny.py --workdir=DIR --mode=train \\",
      "  --config.train.num_steps=500 --config.dit.num_layers=4 --config.sample.prompt='a red circle'",
      "```",
      "",
      "A key that does not exist here is a one-line error, and so is a value that cannot",
      "work (`sora_jax/config_check.py` validates before anything is built or compiled).",
      "Tuples are given as `--config.dit.patch_size='(1, 2, 2)'`; booleans as `True`/`False`.",
      "",
      "Sections: " + ", ".join(
          f"[{section or 'top level'}]({_anchor(_heading(section, banners))})"
          for section in sections) + ", [per-config overrides](#per-config-overrides).",
  ]
  for section, rows in sections.items():
    lines += ["", f"## {_heading(section, banners)}", "",
              "| field | default | what it does |", "|---|---|---|"]
    for key, text in rows:
      lines.append(f"| `{key}` | {_value(defaults[key])} | {_cell(text)} |")
  lines += ["", "## Per-config overrides", "",
            "Each file under `configs/` is `base_config()` with these fields changed; its",
            "docstring names the hardware it targets and the command that runs it.", ""]
  order = [k for k, _ in fields]
  for path, doc, flat, variants in configs:
    changed = _changes(flat, defaults, order)
    lines += [f"### `{path}`", "", "```text", doc, "```", ""]
    if changed:
      lines += ["| field | value | default |", "|---|---|---|"]
      lines += [f"| `{k}` | {_value(v)} | {_value(defaults[k]) if k in defaults else '(new)'} |"
                for k, v in changed]
    else:
      lines.append("No field differs from the defaults.")
    lines.append("")
    for variant, vflat in variants.items():
      lines += [f"With `{path}:{variant}`, on top of the above:", "",
                "| field | value |", "|---|---|"]
      lines += [f"| `{k}` | {_value(v)} |" for k, v in _changes(vflat, flat, order)]
      lines.append("")
  return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true",
                      help="exit 1 if docs/configuration.md differs from what would be written")
  args = parser.parse_args()
  text = render()
  if args.check:
    current = open(OUTPUT, encoding="utf-8").read() if os.path.exists(OUTPUT) else ""
    if current != text:
      print(f"{OUTPUT} is stale; regenerate it: .venv/bin/python scripts/config_doc.py",
            file=sys.stderr)
      sys.exit(1)
    print(f"{OUTPUT} is up to date")
    return
  with open(OUTPUT, "w", encoding="utf-8") as f:
    f.write(text)
  print(f"wrote {OUTPUT}")


if __name__ == "__main__":
  main()
