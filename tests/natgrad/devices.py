"""The devices a test runs on: the CPU always; CUDA and MPS as skipped parameters (with the
reason) where they are absent, so a CPU-only run says what it did not check.

    @pytest.mark.parametrize("device", DEVICES)
    def test_...(device): ...

Every such test carries the ``device`` marker: ``pytest -m device`` runs just them
(scripts/gpu_check.sh does, on a GPU machine).
"""

from __future__ import annotations

import pytest
import torch


def _mps() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


DEVICES = [
    pytest.param("cpu", marks=pytest.mark.device),
    pytest.param("cuda", marks=[pytest.mark.device,
                                pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")]),
]
if _mps():
    DEVICES.append(pytest.param("mps", marks=pytest.mark.device))
