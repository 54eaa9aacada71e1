"""Published figures of the accelerator chips sora_jax plans for, with their sources.

One table, read by `--mode=compile` (does a program fit a chip's HBM; an estimated step
time) and by the planner. Every figure is the vendor's per-chip number; none is measured
here. `topology` is the prefix of a libtpu topology name (`v5:4x4x8` is a v5p slice).
"""
import dataclasses

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int  # HBM per chip.
  bf16_flops: float  # Dense bf16 peak per chip, FLOP/s.
  hbm_bytes_per_s: float  # HBM bandwidth per chip.
  ici_bytes_per_s: float  # Bidirectional inter-chip interconnect bandwidth per chip.
  source: str


CHIPS = {
    # "HBM capacity per chip (GiB) 95", "Peak compute per chip (BF16) 459 TFLOPs", "HBM
    # bandwidth per chip 2765 GBps", "Bidirectional ICI bandwidth per chip 1200 GBps".
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12, 2765e9, 1200e9,
                "https://cloud.google.com/tpu/docs/v5p"),
    # "Peak compute per chip (bf16) 197 TFLOPs", "HBM2 capacity and bandwidth 16 GB, 819
    # GBps", "Bidirectional ICI bandwidth (per chip) 400 GBps".
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12, 819e9, 400e9,
                "https://cloud.google.com/tpu/docs/v5e"),
    # "Peak compute per chip (bf16) 918 TFLOPs", "HBM capacity per chip 32 GB", "HBM
    # bandwidth per chip 1638 GBps", "Bidirectional ICI bandwidth (per chip) 800 GBps".
    # HBM: libtpu 0.0.42 compiles against 31.25 GiB of it ("exceeds available HBM
    # (31.25G)"), which is what a program can use.
    "v6e": Chip("TPU v6e (Trillium)", int(31.25 * GiB), 918e12, 1638e9, 800e9,
                "https://cloud.google.com/tpu/docs/v6e"),
}

# libtpu topology-name prefixes -> CHIPS keys ('v5' is how libtpu names v5p).
TOPOLOGY_PREFIX = {"v5": "v5p", "v5p": "v5p", "v5e": "v5e", "v6e": "v6e"}


def chip_of_topology(topology: str) -> Chip | None:
  """The chip of a topology name such as 'v5:4x4x8' or 'v6e:16x16' (None if not tabled)."""
  return CHIPS.get(TOPOLOGY_PREFIX.get(topology.split(":")[0].lower(), ""))
