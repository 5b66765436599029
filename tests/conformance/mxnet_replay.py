#!/usr/bin/env python3
"""Replays kvstore traces (docs/trace-format.md) on Apache MXNet 1.9.1, the differential oracle.

Usage:
    .venv/bin/python tests/conformance/mxnet_replay.py TRACE [TRACE ...]   ('-' reads stdin)

For every operation of a trace it prints one JSON line, as `kvstore replay` does:
    {"line":N,"ok":true}
    {"line":N,"out":O}
    {"line":N,"error":"<exception class>","message":"<first line of its message>"}
With several traces, a line {"trace":"<path>"} comes before each trace's output.

Besides MXNet's own exception classes, three error names come from the driver itself:
    "Unsupported"  the operation uses something MXNet's Python API cannot express (bfloat16,
                   a custom updater); the comparator skips it.
    "Skipped"      the call is known to crash MXNet 1.9.1 (semantics.md §2.4, §9), so it is not
                   sent; the message says why.
    "Crash"        MXNet killed the process while running this operation (only with process
                   isolation, the default); later operations of that trace print "Skipped".
    "Timeout"      the trace ran past --timeout (process isolation only); later operations print
                   "Skipped".

Every trace is read and checked before anything runs: a line that cannot be read is reported as
`PATH: line N: ...` on stderr with exit status 2, and nothing is printed on stdout. A bug in the
driver itself (a Python exception outside an MXNet call) prints a traceback on stderr and exits
with status 70.

See docs/conformance.md.
"""

import argparse
import json
import math
import os
import re
import select
import signal
import sys
import time
import traceback
from fractions import Fraction

import numpy as np

EXIT_BAD_INPUT = 2
EXIT_DRIVER_BUG = 70

DTYPES = ("float32", "float16", "bfloat16", "float64")
NP_DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64}
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
MAX_ELEMENTS = 1 << 31  # a shape beyond this is refused as input, not allocated


# ------------------------------------------------------------------------------------------------
# Reading traces (mirrors crates/kvstore/src/trace/{op,tensor}.rs; every check happens before any
# operation runs)


class BadInput(Exception):
    """A trace line that cannot be read."""


class Num(float):
    """A JSON number with a fraction or exponent, keeping its text for exact rounding."""

    def __new__(cls, text):
        obj = float.__new__(cls, text)
        obj.text = text
        return obj


def _no_constants(name):
    raise ValueError(f"{name} is not valid JSON")


def load_json(line):
    return json.loads(line, parse_float=Num, parse_constant=_no_constants)


def is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class Device:
    __slots__ = ("kind", "index")

    def __init__(self, kind, index):
        self.kind, self.index = kind, index

    def name(self):
        return f"{self.kind}({self.index})"


DEVICE_RE = re.compile(r"^(cpu|gpu)\((\d+)\)$")


def read_device(obj):
    d = obj.get("device")
    if d is None:
        return Device("cpu", 0)
    m = DEVICE_RE.match(d) if isinstance(d, str) else None
    if not m:
        raise BadInput(f"unknown device {json.dumps(d)}")
    return Device(m.group(1), int(m.group(2)))


class TensorSpec:
    """A tensor of the trace: dense or row_sparse, with data or a placeholder (data is None)."""

    __slots__ = ("shape", "dtype", "device", "sparse", "data", "indices")

    def __init__(self, shape, dtype, device, sparse, data, indices):
        self.shape, self.dtype, self.device = shape, dtype, device
        self.sparse, self.data, self.indices = sparse, data, indices


def read_ints(x, what):
    if not isinstance(x, list):
        raise BadInput(f'"{what}" must be a list of ints')
    for v in x:
        if not is_int(v) or not I64_MIN <= v <= I64_MAX:
            raise BadInput(f'"{what}": {json.dumps(v)} is not a 64-bit int')
    return list(x)


def read_tensor(x):
    if not isinstance(x, dict):
        raise BadInput("a tensor must be a JSON object")
    if "shape" not in x:
        raise BadInput('a tensor needs a "shape"')
    shape = x["shape"]
    if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
        raise BadInput(f"bad shape {json.dumps(shape)}")
    shape = tuple(shape)
    numel = math.prod(shape)
    if numel > MAX_ELEMENTS:
        raise BadInput(f"shape {list(shape)} is too large")
    dtype = x.get("dtype", "float32")
    if dtype not in DTYPES:
        raise BadInput(f"unknown dtype {json.dumps(dtype)}")
    device = read_device(x)
    data = x.get("data")
    if data is not None:
        if not isinstance(data, list):
            raise BadInput('"data" must be a list of numbers')
        for v in data:
            if not (is_number(v) or v in ("nan", "inf", "-inf")):
                raise BadInput(f"{json.dumps(v)} is not a number")
    stype = x.get("stype", "default")
    if stype in ("default", "dense"):
        if data is not None and len(data) != numel:
            raise BadInput(f"shape {list(shape)} needs {numel} elements, data has {len(data)}")
        return TensorSpec(shape, dtype, device, False, data, None)
    if stype != "row_sparse":
        raise BadInput(f"unknown stype {json.dumps(stype)}")
    if not shape:
        raise BadInput("a row_sparse tensor needs at least one dimension")
    indices = read_ints(x.get("indices", []), "indices")
    for a, b in zip(indices, indices[1:]):
        if a >= b:
            raise BadInput(f"row_sparse indices must be strictly increasing: {indices}")
    if indices and (indices[0] < 0 or indices[-1] >= shape[0]):
        raise BadInput(f"row_sparse indices {indices} out of range for {shape[0]} rows")
    row = math.prod(shape[1:])
    if data is None:
        if indices:
            raise BadInput("row_sparse indices without data")
    elif len(data) != len(indices) * row:
        raise BadInput(f"row_sparse data has {len(data)} elements, {len(indices)} rows need {len(indices) * row}")
    return TensorSpec(shape, dtype, device, True, data, indices)


def read_values(x):
    """A tensor, or a list of tensors and lists of tensors (kept in that nesting)."""
    if not isinstance(x, list):
        return read_tensor(x)
    return [[read_tensor(t) for t in item] if isinstance(item, list) else read_tensor(item) for item in x]


def read_key(k):
    if isinstance(k, str):
        return k
    if is_int(k):
        if not I64_MIN <= k <= I64_MAX:
            raise BadInput(f"key {k} is not an int in the signed 64-bit range")
        return int(k)
    raise BadInput(f"a key must be an int or a string, got {json.dumps(k)}")


def read_keys(obj):
    k = field(obj, "key")
    return [read_key(i) for i in k] if isinstance(k, list) else read_key(k)


def field(obj, name):
    if name not in obj:
        raise BadInput(f'missing "{name}"')
    return obj[name]


def optional_str(obj, name, default=None):
    v = obj.get(name, default)
    if v is not None and not isinstance(v, str):
        raise BadInput(f'"{name}" must be a string')
    return v


def optional_bool(obj, name, default):
    v = obj.get(name, default)
    if not isinstance(v, bool):
        raise BadInput(f'"{name}" must be true or false')
    return v


def optional_number(obj, name):
    v = obj.get(name)
    if v is not None and not is_number(v):
        raise BadInput(f'"{name}" must be a number, got {json.dumps(v)}')
    return None if v is None else float(v)


def read_priority(obj):
    p = obj.get("priority", 0)
    if not is_int(p) or not I32_MIN <= p <= I32_MAX:
        raise BadInput(f'"priority" must be a 32-bit int, got {json.dumps(p)}')
    return int(p)


def read_row_ids(x):
    if not isinstance(x, list):
        raise BadInput('"row_ids" must be a list')
    if any(isinstance(i, list) for i in x):
        return ("per_output", [read_ints(i, "row_ids") for i in x])
    return ("one", read_ints(x, "row_ids"))


def read_params(x):
    if not isinstance(x, dict):
        raise BadInput('"params" must be an object')
    for k, v in x.items():
        if not (isinstance(v, str) or is_number(v) or isinstance(v, bool)):
            raise BadInput(f'parameter "{k}" must be a string or a number, got {json.dumps(v)}')
    return x


# The optimizer object of `set_optimizer` (docs/trace-format.md), as kvstore reads it with serde:
# per optimizer, its own fields and their kinds; every optimizer also takes COMMON_FIELDS.
# "number" is a JSON number or "nan", "inf", "-inf"; "number?" and "scheduler" may also be null
# (no clipping, no schedule), other fields may not. "int" is a non-negative 64-bit int. A field
# the trace leaves out (or sets to null) is not passed, so MXNet uses its default, as kvstore does.
COMMON_FIELDS = {"learning_rate": "number", "wd": "number", "rescale_grad": "number",
                 "clip_gradient": "number?", "lr_scheduler": "scheduler"}
OPTIMIZERS = {
    "sgd": {"momentum": "number"},
    "nag": {"momentum": "number"},
    "adam": {"beta1": "number", "beta2": "number", "epsilon": "number", "lazy_update": "bool"},
    "adagrad": {"eps": "number"},
    "rmsprop": {"gamma1": "number", "gamma2": "number", "epsilon": "number", "centered": "bool",
                "clip_weights": "number?"},
    "ftrl": {"lamda1": "number", "beta": "number"},
}
# MXNet's default learning rate of each optimizer: the base lr of a schedule when the trace gives
# none (kvstore's decision: the optimizer's learning_rate is the schedule's base lr).
DEFAULT_LR = {"sgd": 0.01, "nag": 0.01, "adam": 0.001, "adagrad": 0.01, "rmsprop": 0.001, "ftrl": 0.1}
SCHEDULERS = {
    "factor": {"step": "int", "factor": "number", "stop_factor_lr": "number",
               "warmup_steps": "int", "warmup_begin_lr": "number", "warmup_mode": "mode"},
    "multi_factor": {"steps": "ints", "factor": "number",
                     "warmup_steps": "int", "warmup_begin_lr": "number", "warmup_mode": "mode"},
}


def number_field(obj, name):
    v = obj[name]
    if v in ("nan", "inf", "-inf"):
        return float(v)
    if not is_number(v):
        raise BadInput(f'"{name}" must be a number, got {json.dumps(v)}')
    return float(v)


def read_fields(obj, kinds, what):
    """The fields of obj, read by kind (null ones left out where null is allowed); an unknown
    field is an error."""
    for k in obj:
        if k not in kinds:
            raise BadInput(f"unknown field {json.dumps(k)} of {what}")
    out = {}
    for name, kind in kinds.items():
        if name not in obj:
            continue
        v = obj[name]
        if v is None:
            if kind in ("number?", "scheduler"):
                continue
            raise BadInput(f'"{name}" must not be null')
        if kind in ("number", "number?"):
            out[name] = number_field(obj, name)
        elif kind == "bool":
            out[name] = optional_bool(obj, name, False)
        elif kind in ("int", "ints"):
            items = v if kind == "ints" else [v]
            if not isinstance(items, list) or not all(is_int(i) and 0 <= i < 2**64 for i in items):
                expected = "a list of non-negative ints" if kind == "ints" else "a non-negative int"
                raise BadInput(f'"{name}" must be {expected}, got {json.dumps(v)}')
            out[name] = [int(i) for i in items] if kind == "ints" else int(v)
        elif kind == "mode":
            if v not in ("linear", "constant"):
                raise BadInput(f'"{name}" must be "linear" or "constant", got {json.dumps(v)}')
            out[name] = v
        elif kind == "scheduler":
            out[name] = read_scheduler(v)
        else:
            raise AssertionError(kind)
    return out


def read_scheduler(x):
    if not isinstance(x, dict):
        raise BadInput('"lr_scheduler" must be an object or null')
    kind = optional_str(x, "type")
    if kind is None:
        raise BadInput('"lr_scheduler" needs a "type"')
    if kind not in SCHEDULERS:
        raise BadInput(f"unknown lr_scheduler type {json.dumps(kind)}")
    fields = {k: v for k, v in x.items() if k != "type"}
    required = "step" if kind == "factor" else "steps"
    if required not in fields:
        raise BadInput(f'a {kind} lr_scheduler needs "{required}"')
    return {"type": kind, "params": read_fields(fields, SCHEDULERS[kind], f"a {kind} lr_scheduler")}


def read_optimizer(x):
    """{"name", "params": the MXNet keyword arguments the trace gives, "lr_scheduler": or None}."""
    if not isinstance(x, dict):
        raise BadInput('"optimizer" must be an object')
    name = optional_str(x, "name")
    if name is None:
        raise BadInput('missing "name"')
    if name not in OPTIMIZERS:
        raise BadInput(f"unknown optimizer {json.dumps(name)}")
    fields = {k: v for k, v in x.items() if k != "name"}
    params = read_fields(fields, {**COMMON_FIELDS, **OPTIMIZERS[name]}, f"optimizer {name}")
    scheduler = params.pop("lr_scheduler", None)
    return {"name": name, "params": params, "lr_scheduler": scheduler}


def make_optimizer(mx, spec):
    """The mx.optimizer object of a trace's optimizer: only the fields the trace gives (MXNet's
    defaults for the rest); a schedule gets base_lr = the optimizer's learning rate."""
    classes = {"sgd": mx.optimizer.SGD, "nag": mx.optimizer.NAG, "adam": mx.optimizer.Adam,
               "adagrad": mx.optimizer.AdaGrad, "rmsprop": mx.optimizer.RMSProp,
               "ftrl": mx.optimizer.Ftrl}
    params = dict(spec["params"])
    sched = spec["lr_scheduler"]
    if sched is not None:
        lr = params.get("learning_rate", DEFAULT_LR[spec["name"]])
        params["learning_rate"] = lr  # equal to base_lr: MXNet prints no "overwritten" warning
        cls = {"factor": mx.lr_scheduler.FactorScheduler,
               "multi_factor": mx.lr_scheduler.MultiFactorScheduler}[sched["type"]]
        sp = dict(sched["params"])
        if "steps" in sp:
            sp["step"] = sp.pop("steps")
        params["lr_scheduler"] = cls(base_lr=lr, **sp)
    return classes[spec["name"]](**params)


def read_op(line):
    try:
        obj = load_json(line)
    except ValueError as e:
        raise BadInput(f"bad JSON: {e}") from None
    if not isinstance(obj, dict):
        raise BadInput("an operation must be a JSON object")
    name = obj.get("op")
    if not isinstance(name, str):
        raise BadInput('missing "op"')
    op = {"op": name}
    if name == "create":
        op["kind"] = optional_str(obj, "kind", "local")
    elif name == "init":
        op.update(key=read_keys(obj), value=read_values(field(obj, "value")))
    elif name == "push":
        op.update(key=read_keys(obj), value=read_values(field(obj, "value")), priority=read_priority(obj))
    elif name == "pull":
        op.update(key=read_keys(obj), out=read_values(field(obj, "out")), priority=read_priority(obj),
                  ignore_sparse=optional_bool(obj, "ignore_sparse", True))
    elif name == "row_sparse_pull":
        op.update(key=read_keys(obj), out=read_values(field(obj, "out")),
                  row_ids=read_row_ids(field(obj, "row_ids")), priority=read_priority(obj))
    elif name == "pushpull":
        out = obj.get("out")
        op.update(key=read_keys(obj), value=read_values(field(obj, "value")),
                  out=None if out is None else read_values(out))
    elif name == "broadcast":
        op.update(key=read_keys(obj), value=read_values(field(obj, "value")), out=read_values(field(obj, "out")))
    elif name == "set_gradient_compression":
        op["params"] = read_params(field(obj, "params"))
    elif name == "set_optimizer":
        op["optimizer"] = read_optimizer(field(obj, "optimizer"))
    elif name == "set_updater":
        uname = optional_str(obj, "name")
        if uname is None:
            raise BadInput('missing "name"')
        if uname not in ("accumulate", "custom"):
            raise BadInput(f"unknown updater {json.dumps(uname)}")
        scale = optional_number(obj, "scale")
        op.update(name=uname, scale=1.0 if scale is None else scale)
    elif name == "save_optimizer_states":
        path = optional_str(obj, "path")
        if path is None:
            raise BadInput('missing "path"')
        op.update(path=path, dump_optimizer=optional_bool(obj, "dump_optimizer", False))
    elif name == "load_optimizer_states":
        path = optional_str(obj, "path")
        if path is None:
            raise BadInput('missing "path"')
        op["path"] = path
    elif name == "wait_all":
        pass
    else:
        raise BadInput(f"unknown op {json.dumps(name)}")
    return op


def parse_trace(text):
    """[(line number, op)] for every non-blank line, as kvstore's replay reads it."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    ops = []
    for i, line in enumerate(lines):
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip():
            continue
        try:
            op = read_op(line)
        except BadInput as e:
            raise BadInput(f"line {i + 1}: {e}") from None
        if op["op"] == "create" and ops:
            raise BadInput(f'line {i + 1}: "create" must be the first operation')
        ops.append((i + 1, op))
    return ops


# ------------------------------------------------------------------------------------------------
# Numbers: reading decimal text into a dtype, and writing the shortest text that reads back


def to_f32(v):
    """The float32 nearest to the decimal v (a JSON number or "nan"/"inf"/"-inf"), rounding the
    exact decimal once, as Rust's `str::parse::<f32>` does (a float64 step in between could
    double-round)."""
    text = v.text if isinstance(v, Num) else str(v)
    x = float(text)
    f = np.float32(x)
    if not math.isfinite(x) or x == float(f) or not np.isfinite(f):
        return f
    other = np.nextafter(f, np.float32(math.copysign(math.inf, x - float(f))))
    if not np.isfinite(other):
        return f
    mid = (float(f) + float(other)) / 2
    if x != mid:
        return f
    exact, m = Fraction(text), Fraction(mid)
    if exact == m:
        return f  # a true tie: numpy already rounded to even
    return max(f, other) if exact > m else min(f, other)


def element(v, dtype):
    if dtype == "float64":
        return float(v.text if isinstance(v, Num) else v)
    f = to_f32(v)
    return np.float16(f) if dtype == "float16" else f


def np_data(values, dtype):
    return np.array([element(v, dtype) for v in values], dtype=NP_DTYPES[dtype])


def shortest(x, dtype):
    """A JSON value for one element: the shortest decimal that reads back to x in its dtype."""
    xf = float(x)
    if math.isnan(xf):
        return "nan"
    if math.isinf(xf):
        return "inf" if xf > 0 else "-inf"
    if dtype == "float64":
        return xf
    if dtype == "float32":
        return float(repr(np.float32(x)))
    # float16: read back through float32 as kvstore does
    target = np.float16(x)
    if xf == 0.0:
        return xf
    for digits in range(1, 18):
        text = "%.*e" % (digits - 1, xf)
        if np.float16(to_f32(text)) == target:
            return float(text)
    return xf


# ------------------------------------------------------------------------------------------------
# Running a trace on MXNet


class Unsupported(Exception):
    pass


class Skip(Exception):
    pass


def error_message(e):
    """The first meaningful line of an exception's message. MXNet 1.9.1's MXNetError text often
    starts with 'Traceback (most recent call last):' and the C++ file; the message is then the
    line after 'MXNetError: '. A leading 'MXNetError: ' is dropped."""
    lines = [l.strip() for l in str(e).splitlines()]
    if lines and lines[0].startswith("Traceback"):
        lines = [l for l in lines[1:] if l and not l.startswith("File ")]
    for l in lines:
        if l:
            while l.startswith("MXNetError:"):
                l = l[len("MXNetError:"):].strip()
            return l
    return ""


def walk(values):
    """The tensors of a value/output argument, in order."""
    if isinstance(values, list):
        for item in values:
            yield from (item if isinstance(item, list) else [item])
    else:
        yield values


def tmap(fn, values):
    """Maps fn over the tensors of an argument, keeping the nesting."""
    if isinstance(values, list):
        return [[fn(t) for t in item] if isinstance(item, list) else fn(item) for item in values]
    return fn(values)


def normalised_pairs(keys, values):
    """(key, tensor) pairs as MXNet's _ctype_key_value flattens them, or None when Python would
    raise before reaching C (the real call then raises the same error)."""
    if isinstance(keys, list):
        if not isinstance(values, list) or len(keys) != len(values):
            return None
        pairs = []
        for k, v in zip(keys, values):
            pairs += [(k, t) for t in (v if isinstance(v, list) else [v])]
        kinds = {isinstance(k, str) for k, _ in pairs}
        if len(kinds) > 1:
            return None
        return pairs
    return [(keys, t) for t in (values if isinstance(values, list) else [values])]


class Replay:
    def __init__(self, mx, device_names):
        self.mx = mx
        self.device_names = device_names
        self.kv = None
        self.kind = "local"
        # What the driver knows of the store, only to keep crashing calls away from MXNet.
        self.key_type = None  # "int" or "str" once a call fixed it
        self.slots = set()  # int keys with a slot (initialised or poisoned by a failed lookup)
        self.inited = set()  # int keys really initialised (value and merge buffer)

    # -- NDArrays

    def ctx(self, device):
        return self.mx.cpu(device.index)  # no GPU: gpu(i) runs on cpu(i)

    def ndarray(self, spec):
        mx = self.mx
        if spec.dtype == "bfloat16":
            raise Unsupported("bfloat16 is not supported by MXNet 1.9.1's Python API")
        dt = NP_DTYPES[spec.dtype]
        ctx = self.ctx(spec.device)
        if spec.sparse:
            if spec.data is None:
                return mx.nd.sparse.zeros("row_sparse", spec.shape, ctx=ctx, dtype=spec.dtype)
            data = np_data(spec.data, spec.dtype).reshape((len(spec.indices),) + spec.shape[1:])
            ids = np.array(spec.indices, dtype=np.int64)
            return mx.nd.sparse.row_sparse_array((data, ids), shape=spec.shape, ctx=ctx, dtype=spec.dtype)
        data = np.zeros(spec.shape, dt) if spec.data is None else np_data(spec.data, spec.dtype).reshape(spec.shape)
        # mx.nd.array rather than mx.nd.zeros: legacy shape semantics make nd.zeros refuse () and 0-dims
        return mx.nd.array(data, ctx=ctx, dtype=spec.dtype)

    def arrays(self, specs):
        for t in walk(specs):
            if t.dtype == "bfloat16":
                raise Unsupported("bfloat16 is not supported by MXNet 1.9.1's Python API")
        return tmap(self.ndarray, specs)

    def read_back(self, arrays, specs):
        """numpy copies of the outputs (inside the op's try: asnumpy surfaces async errors)."""
        flat_specs = list(walk(specs))
        flat = list(walk(arrays))
        got = []
        for a, spec in zip(flat, flat_specs):
            if a.stype == "row_sparse":
                got.append((spec, a.shape, a.dtype, a.context, a.indices.asnumpy(), a.data.asnumpy()))
            else:
                got.append((spec, a.shape, a.dtype, a.context, None, a.asnumpy()))
        return got

    # -- the driver's model of MXNet's crashing cases

    def check_crashes(self, keys, values, what):
        if isinstance(keys, list) and not isinstance(values, list):
            raise Skip(f"a key list with a single array as {what} crashes MXNet 1.9.1 (semantics.md 9)")

    def check_push(self, keys, values):
        self.check_crashes(keys, values, "value")
        pairs = normalised_pairs(keys, values)
        if pairs is None or not self.native or self.device_comm:
            return
        if self.key_type == "str" or any(isinstance(k, str) for k, _ in pairs):
            return
        counts = {}
        for k, _ in pairs:
            counts[k] = counts.get(k, 0) + 1
        for k, n in counts.items():
            if n >= 2 and k not in self.inited and I32_MIN <= k <= I32_MAX:
                raise Skip(f"a push of {n} values to key {k}, never initialised, crashes MXNet 1.9.1's "
                           "local store (semantics.md 2.4)")

    def check_row_ids(self, outs, row_ids):
        rows = [t.shape[0] if t.shape else 0 for t in walk(outs)]
        if not rows:
            return
        if row_ids[0] == "one":
            checks = [(row_ids[1], min(rows))]  # one list serves every output
        else:
            checks = list(zip(row_ids[1], rows))  # the k-th list serves the k-th output
        for ids, limit in checks:
            bad = [i for i in ids if i < 0 or i >= limit]
            if bad:
                raise Skip(f"row id {bad[0]} is outside the {limit} rows: MXNet 1.9.1 reads out of "
                           "bounds (garbage rows or a crash; semantics.md 5)")

    @property
    def native(self):
        return type(self.kv).__name__ == "KVStore"

    @property
    def device_comm(self):
        return "device" in self.kind

    def note_keys(self, keys, values, ok, initialising=False):
        """Updates the model after a call that reached (or may have reached) C."""
        pairs = normalised_pairs(keys, values)
        if pairs is None or not self.native:
            return
        if any(is_int(k) and not I32_MIN <= k <= I32_MAX for k, _ in pairs):
            return  # OverflowError in Python, before C
        call_type = "str" if pairs and isinstance(pairs[0][0], str) else "int"
        if self.key_type is not None and call_type != self.key_type:
            return  # refused by the key type check, before anything else
        if self.key_type is None and (pairs or isinstance(keys, list)):
            self.key_type = "str" if pairs and isinstance(pairs[0][0], str) else "int"
        int_keys = [k for k, _ in pairs if is_int(k)]
        if initialising:
            seen = set()
            for k in int_keys:
                if k in self.slots or k in seen:
                    break
                seen.add(k)
                self.slots.add(k)
                self.inited.add(k)
        elif not ok:
            self.slots.update(int_keys)  # a failed lookup leaves an empty slot (poisoned key)

    # -- operations

    def run(self, op):
        """('ok', None) | ('out', readback) | ('error', name, message)."""
        try:
            result = self.execute(op)
            self.mx.nd.waitall()
            if isinstance(result, tuple) and result[0] == "read":
                result = ("out", self.read_back(result[1], result[2]))
            return result or ("ok", None)
        except Unsupported as e:
            return ("error", "Unsupported", str(e))
        except Skip as e:
            return ("error", "Skipped", str(e))
        except Exception as e:  # every store error, MXNetError, AssertionError, ... is an output
            self.after_error(op)
            return ("error", type(e).__name__, error_message(e))

    def after_error(self, op):
        try:
            self.mx.nd.waitall()  # collect asynchronous errors of this op here, not in the next one
        except Exception:
            pass

    def store(self):
        if self.kv is None:
            self.kind = "local"
            self.kv = self.mx.kv.create("local")
        return self.kv

    def execute(self, op):
        mx = self.mx
        name = op["op"]
        if name == "create":
            self.kv, self.kind = None, op["kind"].lower()
            self.key_type, self.slots, self.inited = None, set(), set()
            self.kv = mx.kv.create(op["kind"])
            return None
        kv = self.store()
        if name == "init":
            self.check_crashes(op["key"], op["value"], "value")
            vals = self.arrays(op["value"])
            try:
                kv.init(op["key"], vals)
            finally:
                self.note_keys(op["key"], op["value"], True, initialising=True)
            return None
        if name == "push":
            self.check_push(op["key"], op["value"])
            vals = self.arrays(op["value"])
            ok = False
            try:
                kv.push(op["key"], vals, priority=op["priority"])
                mx.nd.waitall()
                ok = True
            finally:
                self.note_keys(op["key"], op["value"], ok)
            return None
        if name == "pull":
            self.check_crashes(op["key"], op["out"], "out")
            outs = self.arrays(op["out"])
            ok = False
            try:
                kv.pull(op["key"], out=outs, priority=op["priority"], ignore_sparse=op["ignore_sparse"])
                mx.nd.waitall()
                ok = True
            finally:
                self.note_keys(op["key"], op["out"], ok)
            return ("read", outs, op["out"])
        if name == "row_sparse_pull":
            self.check_crashes(op["key"], op["out"], "out")
            self.check_row_ids(op["out"], op["row_ids"])
            outs = self.arrays(op["out"])
            row_ids = self.row_ids(op["key"], op["out"], op["row_ids"])
            ok = False
            try:
                kv.row_sparse_pull(op["key"], out=outs, priority=op["priority"], row_ids=row_ids)
                mx.nd.waitall()
                ok = True
            finally:
                self.note_keys(op["key"], op["out"], ok)
            return ("read", outs, op["out"])
        if name == "pushpull":
            self.check_push(op["key"], op["value"])
            if op["out"] is not None:
                self.check_crashes(op["key"], op["out"], "out")
            vals = self.arrays(op["value"])
            outs = None if op["out"] is None else self.arrays(op["out"])
            ok = False
            try:
                kv.pushpull(op["key"], vals, out=outs)
                mx.nd.waitall()
                ok = True
            finally:
                self.note_keys(op["key"], op["value"], ok)
            if outs is None:
                return ("read", vals, op["value"])
            return ("read", outs, op["out"])
        if name == "broadcast":
            self.check_crashes(op["key"], op["value"], "value")
            self.check_crashes(op["key"], op["out"], "out")
            vals = self.arrays(op["value"])
            outs = self.arrays(op["out"])
            try:
                kv.broadcast(op["key"], vals, out=outs)
            finally:
                self.note_keys(op["key"], op["value"], True, initialising=True)
            return ("read", outs, op["out"])
        if name == "set_gradient_compression":
            kv.set_gradient_compression(dict(op["params"]))  # MXNet itself passes str(v) of each value
            return None
        if name == "set_optimizer":
            kv.set_optimizer(make_optimizer(mx, op["optimizer"]))
            return None
        if name == "set_updater":
            if op["name"] == "custom":
                raise Unsupported("a custom updater cannot be replayed")
            kv._set_updater(accumulate(mx, op["scale"]))
            return None
        if name == "save_optimizer_states":
            kv.save_optimizer_states(op["path"], dump_optimizer=op["dump_optimizer"])
            return None
        if name == "load_optimizer_states":
            kv.load_optimizer_states(op["path"])
            return None
        if name == "wait_all":
            mx.nd.waitall()
            return None
        raise AssertionError(f"unhandled op {name}")  # parse_trace accepts no other op

    def row_ids(self, keys, outs, row_ids):
        mx = self.mx
        kind, lists = row_ids
        if kind == "one":
            return mx.nd.array(np.array(lists, dtype=np.int64), dtype="int64")
        arrays = [mx.nd.array(np.array(l, dtype=np.int64), dtype="int64") for l in lists]
        # One list per output after normalisation. MXNet pairs row_ids with keys like values, so
        # with a key list and grouped outputs the lists are regrouped into the outputs' nesting.
        if isinstance(keys, list) and isinstance(outs, list) and any(isinstance(o, list) for o in outs):
            if len(arrays) == sum(len(o) if isinstance(o, list) else 1 for o in outs):
                it = iter(arrays)
                return [[next(it) for _ in o] if isinstance(o, list) else next(it) for o in outs]
        return arrays

    # -- output

    def tensor_json(self, item):
        spec, shape, dtype, context, indices, data = item
        dtype_name = np.dtype(dtype).name
        device = spec.device.name() if self.device_names == "trace" else str(context)
        values = [shortest(x, dtype_name) for x in np.asarray(data).ravel()]
        if indices is not None:
            return {"stype": "row_sparse", "shape": list(shape), "indices": [int(i) for i in indices],
                    "data": values, "dtype": dtype_name, "device": device}
        return {"shape": list(shape), "data": values, "dtype": dtype_name, "device": device}

    def output_line(self, line, result, specs=None):
        if result[0] == "ok":
            return {"line": line, "ok": True}
        if result[0] == "error":
            return {"line": line, "error": result[1], "message": result[2]}
        items = iter([self.tensor_json(i) for i in result[1]])
        return {"line": line, "out": tmap(lambda _: next(items), specs)}


def accumulate(mx, scale):
    """The trace updater `accumulate`: stored = stored + scale * input, computed densely in
    float32 (as kvstore's replay does), written back in place in stored's dtype and storage."""

    def update(key, inp, stored):
        s = stored.tostype("default") if stored.stype != "default" else stored
        g = inp.tostype("default") if inp.stype != "default" else inp
        s32 = s.astype("float32").as_in_context(g.context)
        result = s32 + g.astype("float32") * scale
        result = result.astype(stored.dtype).as_in_context(stored.context)
        if stored.stype == "default":
            stored[:] = result
        else:
            result.tostype(stored.stype).copyto(stored)

    return update


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def op_specs(op):
    if op["op"] == "pushpull" and op["out"] is None:
        return op["value"]
    return op.get("out")


def run_trace(mx, ops, emit, device_names):
    replay = Replay(mx, device_names)
    # MXNet calls the optimizer's updater from C through ctypes, which prints an exception raised
    # in it ("Exception ignored on calling ctypes callback function") and swallows it: the push
    # returns normally (semantics.md 3.4). The hook catches such exceptions, and the op's line
    # gets a field "updater_error" (the first one, "Class: message"); the line stays what MXNet
    # made of the call.
    swallowed = []
    previous_hook = sys.unraisablehook
    sys.unraisablehook = swallowed.append
    try:
        for line, op in ops:
            del swallowed[:]
            result = replay.run(op)
            out = replay.output_line(line, result, op_specs(op))
            if swallowed and "error" not in out:
                e = swallowed[0]
                name = e.exc_type.__name__ if e.exc_type is not None else "Exception"
                out["updater_error"] = f"{name}: {error_message(e.exc_value)}"
            del swallowed[:]
            emit(dumps(out))
    finally:
        sys.unraisablehook = previous_hook


# ------------------------------------------------------------------------------------------------
# Process isolation: each trace runs in a child forked from a parent that has imported mxnet
# but never run an operation, so a crash or hang of MXNet costs one trace, not the batch.


def run_isolated(mx, ops, emit, device_names, timeout):
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        status = 0
        try:
            os.close(r)
            out = os.fdopen(w, "w", buffering=1)

            def child_emit(text):
                out.write(text + "\n")
                out.flush()

            run_trace(mx, ops, child_emit, device_names)
            out.write("#done\n")
            out.flush()
        except BaseException:  # a bug in the driver, not an MXNet error
            traceback.print_exc()
            sys.stderr.flush()
            status = EXIT_DRIVER_BUG
        finally:
            os._exit(status)
    os.close(w)
    done = 0
    finished = False
    buf = b""
    deadline = time.monotonic() + timeout
    timed_out = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([r], [], [], left)
        if not ready:
            continue
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            text, buf = buf.split(b"\n", 1)
            text = text.decode()
            if text == "#done":
                finished = True
            else:
                emit(text)
                done += 1
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == EXIT_DRIVER_BUG:
        print("mxnet_replay: the driver failed in a trace's process (traceback above)", file=sys.stderr)
        raise SystemExit(EXIT_DRIVER_BUG)
    if finished and code == 0:
        return
    if done < len(ops):
        line = ops[done][0]
        if timed_out:
            emit(dumps({"line": line, "error": "Timeout", "message": f"the trace ran past {timeout} s"}))
        else:
            how = f"signal {-code}" if code < 0 else f"exit status {code}"
            emit(dumps({"line": line, "error": "Crash", "message": f"MXNet killed the process ({how})"}))
        for later, _ in ops[done + 1:]:
            emit(dumps({"line": later, "error": "Skipped", "message": f"not run: MXNet stopped at line {line}"}))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Replay kvstore traces (docs/trace-format.md) on MXNet 1.9.1 and print one "
        "JSON line per operation.")
    parser.add_argument("traces", nargs="+", metavar="TRACE", help="trace file, or - for stdin")
    parser.add_argument("--no-fork", action="store_true",
                        help="run every trace in this process (a crash of MXNet then ends the run)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds per trace with process isolation (default 120)")
    parser.add_argument("--device-names", choices=("trace", "mxnet"), default="trace",
                        help="print output devices as the trace names them (gpu(i) stays gpu(i), "
                        "default) or as MXNet's context (cpu(i))")
    args = parser.parse_args(argv)

    traces = []
    stdin_text = None
    for path in args.traces:
        try:
            if path == "-":
                if stdin_text is None:
                    stdin_text = sys.stdin.read()
                text = stdin_text
            else:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
        except OSError as e:
            print(f"{path}: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            traces.append((path, parse_trace(text)))
        except BadInput as e:
            print(f"{path}: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT

    os.environ.setdefault("MXNET_STORAGE_FALLBACK_LOG_VERBOSE", "0")
    import mxnet as mx  # after reading the traces: importing takes seconds

    if mx.__version__ != "1.9.1":
        print(f"mxnet_replay: expected mxnet 1.9.1, found {mx.__version__}", file=sys.stderr)
        return EXIT_BAD_INPUT

    def emit(text):
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    for path, ops in traces:
        if len(traces) > 1:
            emit(dumps({"trace": path}))
        if args.no_fork:
            run_trace(mx, ops, emit, args.device_names)
        else:
            run_isolated(mx, ops, emit, args.device_names, args.timeout)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(1)
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.exit(EXIT_DRIVER_BUG)
