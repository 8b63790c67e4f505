"""TPU chip specifications and slice names -> compile-only devices (no TPU needed, only libtpu).

The one table of per-chip figures used for memory checks, roofline estimates and MFU. Public
specifications from the Cloud TPU system-architecture pages (cloud.google.com/tpu/docs/v4, /v5e,
/v5p, /v6e): peak dense bf16 FLOP/s, HBM capacity and bandwidth, and the chip's total
inter-chip-interconnect (ICI) bandwidth.

==== ================ ============ ============== ==============
chip peak bf16 TFLOP/s HBM (GiB)   HBM GB/s       ICI Gbit/s
==== ================ ============ ============== ==============
v4   275               32           1228           2400
v5e  197               16           819            1600
v5p  459               95           2765           4800
v6e  918               32           1640           3584
==== ================ ============ ============== ==============

Slice names: ``v5p-128`` / ``v4-32`` (v4 and v5p count TensorCores, 2 per chip: 64 / 16 chips),
``v5e-16`` / ``v6e-8`` (chips), or an explicit ``v5p:4x4x4`` / ``v5e:2x4`` chip grid.
"""
from __future__ import annotations

import dataclasses
import os
import re


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    name: str
    peak_tflops: float    # dense bf16, per chip
    hbm_gib: float        # HBM capacity per chip
    hbm_gbps: float       # HBM bandwidth, GB/s
    ici_gbitps: float     # total ICI bandwidth per chip, Gbit/s
    cores_in_name: int    # TensorCores per chip counted by the slice name (v4-8 = 4 chips)
    chip_config: str      # libtpu chip_config_name
    grid_dims: int        # 3-D torus (v4, v5p) or 2-D (v5e, v6e)

    @property
    def hbm_bytes(self) -> int:
        return int(self.hbm_gib * 2 ** 30)


CHIPS = {
    "v4": ChipSpec("v4", 275.0, 32.0, 1228.0, 2400.0, 2, "megacore", 3),
    "v5e": ChipSpec("v5e", 197.0, 16.0, 819.0, 1600.0, 1, "default", 2),
    "v5p": ChipSpec("v5p", 459.0, 95.0, 2765.0, 4800.0, 2, "megacore", 3),
    "v6e": ChipSpec("v6e", 918.0, 32.0, 1640.0, 3584.0, 1, "default", 2),
}

_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "v5": "v5p"}


class TopologyError(ValueError):
    """A slice name that cannot be mapped to a TPU topology."""


def chip_for_device_kind(kind: str) -> ChipSpec | None:
    """The chip of a ``jax.Device.device_kind`` ('TPU v5 lite' = v5e, 'TPU v5' = v5p, ...); None off TPU."""
    k = kind.lower()
    if "tpu" not in k:
        return None
    if "v6" in k:
        return CHIPS["v6e"]
    if "v5" in k:
        return CHIPS["v5e"] if ("lite" in k or "v5e" in k) else CHIPS["v5p"]
    if "v4" in k:
        return CHIPS["v4"]
    return None


def _grid(chips: int, dims: int) -> tuple[int, ...]:
    """The usual chip grid of a slice: 4 -> 2x2x1, 8 -> 2x2x2, 64 -> 4x4x4, 128 -> 4x4x8; 16 -> 4x4 (2-D)."""
    if chips < 1 or chips & (chips - 1):
        raise TopologyError(f"{chips} chips: slice sizes are powers of two")
    g = [1] * dims
    while g[0] * (g[1] if dims > 1 else 1) * (g[2] if dims > 2 else 1) < chips:
        i = max(range(dims), key=lambda j: (-g[j], j))  # double the smallest (the last of equals)
        g[i] *= 2
    big = sorted(x for x in g if x > 1)
    return tuple(big + [1] * (dims - len(big)))


@dataclasses.dataclass(frozen=True)
class Target:
    """A TPU slice: chip type, chip grid, and the libtpu topology arguments."""

    chip: ChipSpec
    grid: tuple[int, ...]

    @property
    def chips(self) -> int:
        n = 1
        for g in self.grid:
            n *= g
        return n

    @property
    def topology_name(self) -> str:
        return f"{self.chip.name}:{'x'.join(map(str, self.grid))}"

    @property
    def chips_per_host_bounds(self) -> tuple[int, int, int]:
        g = tuple(self.grid) + (1,) * (3 - len(self.grid))
        return (min(2, g[0]), min(2, g[1]), 1)

    def describe(self) -> str:
        return f"{self.topology_name} ({self.chips} chips, {self.chip.hbm_gib:g} GiB HBM each)"


def parse_topology(name: str) -> Target:
    """``v5p-128`` | ``v5p:4x4x4`` | ``v5e-16`` | ``v6e-8`` | ``v4-32`` -> :class:`Target`."""
    s = name.strip().lower()
    m = re.fullmatch(r"([a-z0-9]+)(?::([0-9x]+)|-(\d+))", s)
    kind = _ALIASES.get(m.group(1), m.group(1)) if m else None
    if not m or kind not in CHIPS:
        raise TopologyError(f"unknown TPU topology {name!r}; use e.g. v5p-128, v5p:4x4x4, v5e-16, v6e-8 or v4-32 "
                            f"(chips: {', '.join(CHIPS)})")
    chip = CHIPS[kind]
    if m.group(2):
        grid = tuple(int(x) for x in m.group(2).split("x") if x)
        if len(grid) != chip.grid_dims or min(grid) < 1:
            raise TopologyError(f"{name!r}: a {chip.name} grid has {chip.grid_dims} dimensions, "
                                f"e.g. {chip.name}:{'x'.join(['2'] * chip.grid_dims)}")
    else:
        n = int(m.group(3))
        if n % chip.cores_in_name:
            raise TopologyError(f"{name!r}: {chip.name} slice names count {chip.cores_in_name} cores per chip")
        grid = _grid(n // chip.cores_in_name, chip.grid_dims)
    return Target(chip, grid)


def topology_devices(target: Target) -> list:
    """Compile-only devices of ``target`` (needs libtpu: ``pip install 'jax[tpu]'``, no TPU)."""
    try:
        import libtpu  # noqa: F401, PLC0415 - optional dependency
    except ImportError as e:
        raise TopologyError("compiling for a TPU topology needs libtpu: pip install -e '.[tpu]'") from e
    # several processes (tests, a benchmark's workers) may load libtpu at once for compilation only
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies  # noqa: PLC0415

    topo = topologies.get_topology_desc(platform="tpu", topology_name=target.topology_name,
                                        chip_config_name=target.chip.chip_config,
                                        chips_per_host_bounds=target.chips_per_host_bounds)
    return list(topo.devices)
