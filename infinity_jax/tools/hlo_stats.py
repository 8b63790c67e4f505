"""Per-step statistics read from a compiled program's HLO text: collectives, FLOPs, HBM bytes.

XLA's ``cost_analysis()`` counts the body of a ``while`` loop once, so a model whose blocks run
under ``jax.lax.scan`` is undercounted by the depth. This module walks the optimized HLO module
instead: every computation gets a multiplicity (how many times one step runs it: a while body
runs its trip count times, read from ``known_trip_count`` or from the loop condition's
``compare(i, constant(N)), direction=LT``), and

* collectives (all-gather, reduce-scatter, all-reduce, all-to-all, collective-permute, also their
  async ``-start`` forms) are counted with the bytes of their result per device;
* matmul FLOPs are ``2 x prod(result) x contracted size`` of every ``dot`` / ``convolution``;
* HBM bytes are the operand + result bytes of every top-level instruction (fusions, copies,
  collectives, custom calls; not the instructions inside a fusion), as XLA's estimate does, except
  where a slice is read or written in place: a ``dynamic-slice`` / ``slice`` reads its result's
  bytes, a ``dynamic-update-slice`` reads and writes its update's bytes (the buffer is updated in
  place), and a fusion operand that is only sliced inside the fusion counts the slices' bytes. A
  layer loop over stacked parameters or a stacked KV cache reads one layer per trip, not the stack.

All figures are per device (the HLO of an SPMD program is one device's program).
"""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4,
                "s64": 8, "u64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16,
                "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "token": 0}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_COMP_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$")
_CALLEES = re.compile(r"\b(body|condition|calls|to_apply|true_computation|false_computation)=%([\w.\-]+)")
_CALLS = re.compile(r"\bcalls=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_NO_TRAFFIC = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "while", "conditional", "call",
               "after-all", "partition-id", "replica-id", "iota", "opt-barrier", "add-dependency"}


def _strip_comments(s: str) -> str:
    return re.sub(r"/\*.*?\*/", "", s)


def _split_type_and_op(rest: str) -> tuple[str, str, str]:
    """``'f32[2]{0} add(%a, %b), x=1'`` -> (type, opcode, text after the opcode's '(')."""
    rest = _strip_comments(rest)
    depth = 0
    i = 0
    if rest.startswith("("):  # a tuple type: find its matching ')'
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                break
        i += 1
    m = re.compile(r"\s*(?:\S*?)\s+([a-z][\w\-]*)\(").match(rest, i) if i else re.match(
        r"(\S+)\s+([a-z][\w\-]*)\(", rest)
    if m is None:
        return rest, "", ""
    if i:
        return rest[:i], m.group(1), rest[m.end():]
    return m.group(1), m.group(2), rest[m.end():]


def _tuple_elements(t: str) -> list[str]:
    """Top-level elements of a tuple type ``(a, (b, c), d)``; ``[t]`` for an array type."""
    t = t.strip()
    if not t.startswith("("):
        return [t]
    out, depth, cur = [], 0, ""
    for ch in t[1:-1]:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return [x.strip() for x in out]


def type_bytes(t: str) -> int:
    """Bytes of every array in a (possibly tuple) HLO type."""
    total = 0.0
    for dt, dims in _ARRAY.findall(t):
        n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
        total += n * _DTYPE_BYTES.get(dt, 4)
    return int(total)


def _dims(t: str) -> list[int]:
    m = _ARRAY.search(t)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _operands(args: str) -> list[str]:
    """Names of the operands in the text after an opcode's '(' (up to the matching ')')."""
    depth, end = 1, len(args)
    for i, ch in enumerate(args):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            end = i
            break
    return re.findall(r"%([\w.\-]+)", args[:end])


def _group_size(line: str) -> int:
    """Devices in one replica group of a collective (1 when unknown)."""
    m = re.search(r"replica_groups=\{\{([^}]*)\}", line)
    if m:
        return len([x for x in m.group(1).split(",") if x.strip()])
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]", line)
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
    if m:
        sizes = dict((k.strip().strip("'"), int(v)) for k, v in (x.split("=") for x in m.group(1).split(",")))
        return int(np.prod([sizes.get(a.strip().strip("'"), 1) for a in m.group(2).split(",") if a.strip()]))
    m = re.search(r"source_target_pairs=\{([^}]*(?:\}[^}]*)*)\}", line)
    return 2 if m else 1


@dataclasses.dataclass
class _Instr:
    name: str
    type: str
    op: str
    args: str
    line: str


@dataclasses.dataclass
class HloStats:
    """Per-device, per-step figures of one compiled program (see the module docstring)."""

    collectives: dict       # kind -> {"count": static count in the HLO, "executed": per step, "bytes": per step}
    matmul_flops: float     # dot / convolution FLOPs per step, loops counted trip-count times
    hbm_bytes: float        # operand + result bytes of top-level instructions per step
    ici_bytes: float        # estimated bytes each device sends over the interconnect per step
    loops: list             # (computation name, trip count) of every while loop

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def parse_module(text: str) -> tuple[dict, str]:
    """HLO text -> ({computation name: [_Instr]}, entry name), in the order of the text."""
    comps: dict[str, list[_Instr]] = {}
    entry = ""
    cur = None
    for line in text.splitlines():
        h = _COMP_HEADER.match(line)
        if h and not line.startswith(" "):
            cur = h.group(2)
            comps[cur] = []
            if h.group(1):
                entry = cur
            continue
        if cur is None:
            continue
        if line.rstrip() == "}":
            cur = None
            continue
        m = _INSTR.match(line)
        if m:
            t, op, args = _split_type_and_op(m.group(2))
            comps[cur].append(_Instr(m.group(1), t, op, args, line))
        elif comps[cur]:  # an attribute spread over several lines (a Pallas kernel's backend_config)
            comps[cur][-1].line += "\n" + line
    if not entry and comps:
        entry = list(comps)[-1]
    return comps, entry


def _trip_count(while_line: str, cond: list[_Instr]) -> int | None:
    m = re.search(r'known_trip_count[^0-9]*(\d+)', while_line)
    if m:
        return int(m.group(1))
    consts = {}
    for ins in cond:
        c = re.match(r"(-?\d+)\)", ins.args) if ins.op == "constant" else None
        if c:
            consts[ins.name] = int(c.group(1))
    for ins in cond:
        if ins.op == "compare" and "direction=LT" in ins.line:
            for name in _operands(ins.args):
                if name in consts:
                    return consts[name]
    return None


def _matmul_flops(ins: _Instr, shapes: dict) -> float:
    out = _dims(ins.type)
    ops = _operands(ins.args)
    if len(ops) < 2 or ops[0] not in shapes or ops[1] not in shapes:
        return 0.0
    if ins.op == "dot":
        lhs = _dims(shapes[ops[0]])
        m = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", ins.line)
        k = int(np.prod([lhs[int(i)] for i in m.group(1).split(",") if i])) if m else 1
        return 2.0 * float(np.prod(out)) * k
    rhs = _dims(shapes[ops[1]])
    m = re.search(r"dim_labels=[^_]*_([^-]*)->", ins.line)
    if not m or len(m.group(1)) != len(rhs):
        return 0.0
    labels = m.group(1)
    lhs_labels = re.search(r"dim_labels=([^_]*)_", ins.line).group(1)
    lhs = _dims(shapes[ops[0]])
    # per output element: input features x the window taps that meet real inputs (XLA on TPU also
    # writes batched matmuls as convolutions whose window runs over padding or dilation holes)
    size = re.search(r"window=\{[^}]*size=([0-9x]+)", ins.line)
    dil = re.search(r"window=\{[^}]*lhs_dilate=([0-9x]+)", ins.line)
    sizes = [int(v) for v in size.group(1).split("x")] if size else []
    dils = [int(v) for v in dil.group(1).split("x")] if dil else [1] * len(sizes)
    taps = 1.0
    for d, (w, dl) in enumerate(zip(sizes, dils)):
        real = lhs[lhs_labels.index(str(d))] if str(d) in lhs_labels and len(lhs) == len(lhs_labels) else w
        taps *= min(-(-w // dl), real)
    return 2.0 * float(np.prod(out)) * rhs[labels.index("i")] * taps


_SLICES = ("dynamic-slice", "slice")
_DUS = "dynamic-update-slice"


def _params(body: list[_Instr]) -> dict[int, str]:
    """Parameter number -> instruction name in a computation."""
    out = {}
    for ins in body:
        m = re.match(r"\s*(\d+)\)", ins.args) if ins.op == "parameter" else None
        if m:
            out[int(m.group(1))] = ins.name
    return out


def _sliced_read(name: str, body: list[_Instr], comps: dict) -> float | None:
    """Bytes read of ``name`` (a parameter of ``body``) when it is only sliced (also inside nested
    fusions, through bitcasts); None when some use reads it whole."""
    total = 0.0
    for u in body:
        ops = _operands(u.args)
        if name not in ops:
            continue
        if u.op == "bitcast":
            r = _sliced_read(u.name, body, comps)
        elif u.op in _SLICES and ops[0] == name and ops.count(name) == 1:
            r = float(type_bytes(u.type))
        elif u.op == "fusion" and (m := _CALLS.search(u.line)) and m.group(1) in comps:
            inner = comps[m.group(1)]
            ps = _params(inner)
            reads = [_sliced_read(ps[i], inner, comps) if i in ps else None for i, o in enumerate(ops) if o == name]
            r = None if None in reads else sum(reads)
        else:
            r = None
        if r is None:
            return None
        total += r
    return total


def _fusion_traffic(operand_types: list[str], result_type: str, body: list[_Instr], comps: dict) -> float:
    """HBM bytes of one fusion: its operands and result, with sliced operands counted by the bytes
    of their slices and a dynamic-update-slice root (in place) by its update's bytes."""
    by_name = {ins.name: ins for ins in body}

    def source(name: str) -> str:  # through bitcasts, back to what they view
        while name in by_name and by_name[name].op == "bitcast":
            name = _operands(by_name[name].args)[0]
        return name

    root = next((ins for ins in reversed(body) if re.match(r"\s*ROOT\s", ins.line)), body[-1] if body else None)
    if root is None:
        return float(sum(type_bytes(t) for t in operand_types) + type_bytes(result_type))
    outs = [by_name[source(o)] for o in _operands(root.args) if source(o) in by_name] if root.op == "tuple" else [root]
    in_place, result = set(), 0.0
    for r in outs:
        ops = _operands(r.args)
        if r.op == _DUS and len(ops) >= 2:
            in_place.add(source(ops[0]))
            result += type_bytes(by_name[ops[1]].type) if ops[1] in by_name else 0
        else:
            result += type_bytes(r.type)
    if not in_place:
        result = type_bytes(result_type)
    params = _params(body)
    total = result
    for i, t in enumerate(operand_types):
        name = params.get(i)
        if name in in_place:
            continue
        read = _sliced_read(name, body, comps) if name is not None else None
        total += type_bytes(t) if read is None else read
    return total


def _traffic(ins: _Instr, shapes: dict, comps: dict) -> float:
    """HBM bytes one execution of a top-level instruction reads and writes (see the module docstring)."""
    ops = [o for o in _operands(ins.args) if o in shapes]
    if ins.op in _SLICES:
        return 2.0 * type_bytes(ins.type)
    if ins.op == _DUS and len(ops) >= 2:
        return 2.0 * type_bytes(shapes[ops[1]])
    if ins.op == "fusion":
        m = _CALLS.search(ins.line)
        if m and m.group(1) in comps:
            return _fusion_traffic([shapes[o] for o in ops], ins.type, comps[m.group(1)], comps)
    return float(sum(type_bytes(shapes[o]) for o in ops) + type_bytes(ins.type))


def hlo_stats(text: str) -> HloStats:
    """Collectives, matmul FLOPs and HBM bytes per device and step of an optimized HLO module."""
    comps, entry = parse_module(text)
    mult = {name: 0.0 for name in comps}
    mult[entry] = 1.0
    fused: set[str] = set()
    loops = []
    for name in reversed(list(comps)):  # callers come after their callees in the text
        m = mult[name]
        for ins in comps[name]:
            callees = _CALLEES.findall(ins.line)
            b = _BRANCHES.search(ins.line)
            if b:
                callees += [("branch", x.strip().lstrip("%")) for x in b.group(1).split(",") if x.strip()]
            trip = None
            if ins.op == "while":
                cond = dict(callees).get("condition")
                trip = _trip_count(ins.line, comps.get(cond, []))
                loops.append((dict(callees).get("body"), trip))
            for kind, callee in callees:
                if callee not in mult:
                    continue
                if ins.op == "fusion" and kind == "calls":
                    fused.add(callee)
                factor = (trip or 1) if kind == "body" else 1
                if kind in ("to_apply",) and ins.op not in ("call",):
                    fused.add(callee)  # reducers: scalar code inside an instruction
                mult[callee] += m * factor
    coll = {k: {"count": 0, "executed": 0.0, "bytes": 0.0} for k in COLLECTIVES}
    flops = hbm = ici = 0.0
    for name, instrs in comps.items():
        m = mult[name]
        shapes = {ins.name: ins.type for ins in instrs}
        for ins in instrs:
            if ins.op in ("dot", "convolution"):
                flops += m * _matmul_flops(ins, shapes)
            base = ins.op[:-6] if ins.op.endswith("-start") else ins.op
            if base in COLLECTIVES:
                elems = _tuple_elements(ins.type)
                nbytes = type_bytes(elems[1] if ins.op.endswith("-start") and len(elems) >= 2 else ins.type)
                c = coll[base]
                c["count"] += 1
                c["executed"] += m
                c["bytes"] += m * nbytes
                n = _group_size(ins.line)
                share = {"all-gather": (n - 1) / n, "reduce-scatter": n - 1, "all-reduce": 2 * (n - 1) / n,
                         "all-to-all": (n - 1) / n, "collective-permute": 1.0}[base]
                ici += m * nbytes * share
            if name in fused or ins.op in _NO_TRAFFIC or ins.op.endswith("-done"):
                continue
            hbm += m * _traffic(ins, shapes, comps)
    return HloStats(coll, flops, hbm, ici, loops)
