"""Training metrics: a progress line (loss, steps/s, ETA), `metrics.jsonl`, TensorBoard.

Only process 0 writes; every process may call `log`. In a bucket (`gs://`) there is no
append (gcsfs silently overwrites), so the rows are kept in memory, with those already
there, and the whole object is rewritten at each log; TensorBoard events are written to
a local folder and copied up at each log. Both cost one small upload per logged step.
"""
import json
import sys
import tempfile
import time

import jax
from etils import epath

from sora_jax import paths


class MetricsLogger:
  """Appends one JSON object per logged step to WORKDIR/<name>.jsonl and prints progress."""

  def __init__(self, workdir: str, total_steps: int, start_step: int = 0,
               tensorboard: bool = True, name: str = "metrics", tag: str = "train"):
    self.active = jax.process_index() == 0
    self.total = total_steps
    self.tag = tag
    self.path = paths.path(workdir) / f"{name}.jsonl"
    self._remote = paths.is_remote(self.path)
    self._rows = None  # remote: every line of the object, rewritten at each log
    self._t0 = time.time()
    self._last_t = self._t0
    self._last_step = start_step
    # The ETA's rate is measured from the first logged step on, so that the compile (and
    # restore) before it does not count as training time; until then, from the start.
    self._rate_from = (self._t0, start_step)
    self._rate_measured = False  # whether _rate_from is the first logged step yet
    self._tb = None
    self._tb_dir = paths.path(workdir) / "tensorboard" / tag
    self._tb_local = None  # remote: the local folder the events are written to first
    if self.active and self._remote:
      self._rows = self.path.read_text().splitlines() if self.path.exists() else []
    if self.active and tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      if self._remote:
        self._tb_local = tempfile.mkdtemp(prefix="sora_jax_tb_")
      else:
        self._tb_dir.mkdir(parents=True, exist_ok=True)
      self._tb = SummaryWriter(self._tb_local or str(self._tb_dir))

  def log(self, step: int, metrics: dict) -> dict:
    """Writes `metrics` (python/numpy scalars) for `step`; returns the row written."""
    now = time.time()
    row = {"step": int(step), "mode": self.tag, **{k: float(v) for k, v in metrics.items()},
           "elapsed_s": now - self._t0}
    steps_per_s = None
    if step > self._last_step:  # a second row for the same step (evals) carries no timing
      steps_per_s = (step - self._last_step) / max(now - self._last_t, 1e-9)
      row["steps_per_s"] = steps_per_s
      self._last_t, self._last_step = now, step
    t_from, step_from = self._rate_from
    rate = (step - step_from) / max(now - t_from, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    if not self._rate_measured and step > step_from:
      self._rate_from, self._rate_measured = (now, step), True
    if not self.active:
      return row
    if self._remote:
      self._rows.append(json.dumps(row))
      self.path.write_text("\n".join(self._rows) + "\n")
    else:
      with self.path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k not in ("step", "mode"):
          self._tb.add_scalar(f"{self.tag}/{k}", v, step)
      self._tb.flush()
      self._upload_events()
    pct = 100.0 * step / max(self.total, 1)
    bar = "#" * int(pct // 5) + "." * (20 - int(pct // 5))
    extras = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "loss")
    loss = f"loss={row['loss']:.5f} " if "loss" in row else ""
    rate_text = "" if steps_per_s is None else f"{steps_per_s:.2f} steps/s "
    print(f"[{self.tag}] [{bar}] step {step}/{self.total} {loss}{rate_text}"
          f"ETA {_fmt(eta)} {extras}", file=sys.stdout, flush=True)
    return row

  def _upload_events(self) -> None:
    if self._tb_local is None:
      return
    self._tb_dir.mkdir(parents=True, exist_ok=True)
    for f in epath.Path(self._tb_local).iterdir():
      (self._tb_dir / f.name).write_bytes(f.read_bytes())

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._upload_events()
    if self._tb_local is not None:
      epath.Path(self._tb_local).rmtree(missing_ok=True)


def _fmt(seconds: float) -> str:
  if seconds != seconds:  # nan
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def read_jsonl(path: str) -> list[dict]:
  return [json.loads(line) for line in paths.path(path).read_text().splitlines() if line.strip()]


def training_seconds(rows: list[dict], mode: str) -> dict[int, float]:
  """{step: seconds of training up to it} for `mode`'s rows of a metrics.jsonl.

  `elapsed_s` restarts at 0 in every run segment (each resume); the segments are chained,
  so the figure is time spent training, without the pauses between segments.
  """
  out, offset, last = {}, 0.0, 0.0
  for r in rows:
    if r.get("mode") != mode or "elapsed_s" not in r:
      continue
    e = float(r["elapsed_s"])
    if e < last:
      offset += last
    last = e
    out[int(r["step"])] = offset + e
  return out
