import torch

from natgrad.devices import describe, pick_device


def test_pick_device_follows_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("natgrad.devices._mps_available", lambda: False)
    assert pick_device() == torch.device("cpu")
    assert pick_device("cuda") == torch.device("cpu")  # unavailable preference falls back
    monkeypatch.setattr("natgrad.devices._mps_available", lambda: True)
    assert pick_device() == torch.device("mps")
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")


def test_describe_cpu_names_torch_version():
    info = describe("cpu")
    assert info.kind == "cpu"
    assert info.torch_version == torch.__version__.split("+")[0]
    assert info.torch_version in info.label and "CPU" in info.label


def test_describe_cuda_uses_the_gpu_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H200")
    assert describe(torch.device("cuda")).name == "NVIDIA H200"
