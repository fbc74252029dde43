"""The labs' default results, computed in advance and shipped as data.

``python scripts/lab_defaults.py`` opens every lesson page (in Streamlit's
AppTest), lets every lab compute what its opening settings show, and writes
each result under the text of its cache key (``repr(key)``: a frozen
``Spec``, or a tuple of plain values) to :data:`PATH`. A lab opening at
those settings then shows its figure at once instead of training.

The file is JSON: dataclasses are written with their class (only ``natgrad``
classes are read back), numpy arrays and torch tensors as dtype, shape and
base64 bytes (exact), tuples as tuples. A trajectory's ``model_state`` (the
trained weights) is left out; what a lab derives from it is stored under its
own key.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import importlib
import json
import math
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import torch

PATH = Path(__file__).resolve().parent / "defaults" / "lab_defaults.json.gz"
FORMAT = 1
_ALLOWED_MODULES = ("natgrad.",)  # classes read back from the file
_DROPPED_FIELDS = {"natgrad.experiments.Trajectory": {"model_state"}}


def key_text(key: Hashable) -> str:
    """The stable text a cache key is stored under."""
    return repr(key)


def encode(value: Any) -> Any:
    """``value`` as JSON-able data (see the module docstring)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, np.generic):
        return encode(value.item())
    if isinstance(value, torch.Tensor):
        arr = value.detach().cpu().numpy()
        return {"__tensor__": _array(arr)}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": _array(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        name = f"{cls.__module__}.{cls.__qualname__}"
        dropped = _DROPPED_FIELDS.get(name, set())
        fields = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name not in dropped}
        return {"__dataclass__": name, "fields": fields}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not any(k.startswith("__") for k in value):
            return {k: encode(v) for k, v in value.items()}
        return {"__dict__": [[encode(k), encode(v)] for k, v in value.items()]}
    raise TypeError(f"cannot store a {type(value).__name__} ({str(value)[:80]})")


def decode(data: Any) -> Any:
    """The value :func:`encode` wrote."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__float__" in data:
        return float(data["__float__"])
    if "__ndarray__" in data:
        return _unarray(data["__ndarray__"])
    if "__tensor__" in data:
        return torch.from_numpy(_unarray(data["__tensor__"]).copy())
    if "__tuple__" in data:
        return tuple(decode(v) for v in data["__tuple__"])
    if "__dict__" in data:
        return {_hashable(decode(k)): decode(v) for k, v in data["__dict__"]}
    if "__dataclass__" in data:
        cls = _class(data["__dataclass__"])
        fields = {k: decode(v) for k, v in data["fields"].items()}
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        obj = cls(**{k: v for k, v in fields.items() if k in init})
        for k, v in fields.items():
            if k not in init:
                object.__setattr__(obj, k, v)
        return obj
    return {k: decode(v) for k, v in data.items()}


def _hashable(v: Any) -> Any:
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v


def _array(arr: np.ndarray) -> dict:
    arr = np.ascontiguousarray(arr)
    return {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": base64.b64encode(arr.tobytes()).decode()}


def _unarray(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["data"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


def _class(name: str) -> type:
    if not name.startswith(_ALLOWED_MODULES):
        raise ValueError(f"the stored defaults name a class outside natgrad: {name}")
    module, _, qualname = name.rpartition(".")
    while module:
        try:
            obj: Any = importlib.import_module(module)
            break
        except ImportError:  # a nested class: the module is shorter
            module, _, outer = module.rpartition(".")
            qualname = f"{outer}.{qualname}"
    else:
        raise ValueError(f"no module for {name}")
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise ValueError(f"{name} is not a dataclass")
    return obj


# ---------------------------------------------------------------------- the file
def save(entries: dict[str, Any], meta: dict[str, Any], path: Path = PATH) -> None:
    """Write ``entries`` (key text -> value) with ``meta`` (how and when they were computed)."""
    doc = {"format": FORMAT, "meta": meta, "entries": {k: encode(v) for k, v in sorted(entries.items())}}
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1, sort_keys=False, allow_nan=False)
    with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime 0: the same results give the same bytes
        f.write(text.encode())


def load(path: Path = PATH) -> tuple[dict[str, Any], dict[str, Any]]:
    """(entries as encoded data, meta); empty when there is no file or it is unreadable."""
    try:
        with gzip.open(path, "rb") as f:
            doc = json.loads(f.read().decode())
    except (OSError, ValueError):
        return {}, {}
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return {}, {}
    return doc.get("entries", {}), doc.get("meta", {})
