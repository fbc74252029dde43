"""Pick the device the labs run on and describe it.

Order of preference: CUDA, then Apple MPS, then the CPU. Nothing in natgrad
hard-codes "cuda"; code takes a ``torch.device`` from here or from a spec.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda" | "mps" | "cpu"
    name: str  # e.g. "NVIDIA H200", "Apple MPS", "CPU (2 cores)"
    torch_version: str

    @property
    def label(self) -> str:
        return f"{self.name} · torch {self.torch_version}"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(prefer: str | None = None) -> torch.device:
    """The best available device, or ``prefer`` if given and available.

    ``prefer`` may be "cuda", "mps" or "cpu"; an unavailable preference falls
    back to the automatic choice.
    """
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": _mps_available()}
    if prefer is not None and available.get(prefer, False):
        return torch.device(prefer)
    for kind in ("cuda", "mps"):
        if available[kind]:
            return torch.device(kind)
    return torch.device("cpu")


def describe(device: torch.device | str | None = None) -> DeviceInfo:
    """Name the device (GPU model for CUDA) and the torch version."""
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        name = "Apple MPS"
    else:
        name = f"CPU ({os.cpu_count()} cores)"
    return DeviceInfo(kind=device.type, name=name, torch_version=torch.__version__.split("+")[0])
