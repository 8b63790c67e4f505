"""A finished (or running) sweep read back: validation records, per-image metrics, plans."""
from __future__ import annotations

import dataclasses
import io

import numpy as np

from infinity_jax.scaling.files import as_path, read_json, read_jsonl


@dataclasses.dataclass
class SweepData:
    records: list  # validation records (dicts)
    samples: dict  # (size, step) -> per-image metric arrays (may be empty)
    plan: dict     # size -> plan.json


def load_sweep(workdir: str, metric: str = "loss") -> SweepData:
    wd = as_path(workdir)
    records, samples, plans = [], {}, {}
    for d in sorted(wd.iterdir()):
        if not (d / "plan.json").exists():
            continue
        plan = read_json(d / "plan.json")
        plans[plan["size"]] = plan
        by_step = {}
        for r in read_jsonl(d / "validation.jsonl"):
            by_step[int(r["step"])] = r  # the last record of a step wins
        for st_, r in sorted(by_step.items()):
            records.append(r)
            p = d / "validation" / f"step_{st_:08d}.npz"
            if p.exists():
                with np.load(io.BytesIO(p.read_bytes())) as z:
                    samples[(r["size"], st_)] = {k: z[k] for k in z.files}
    if not records:
        raise FileNotFoundError(f"no validation records under {workdir} "
                                "(run `python -m infinity_jax.scaling run` first)")
    return SweepData(records, samples, plans)


def records_of(recs, entry):
    """The records behind a loss-vs-params entry, in its order."""
    out = []
    for s, c in zip(entry["sizes"], entry["compute"]):
        out.append(next(r for r in recs if r["size"] == s and r["compute"] == c))
    return out

