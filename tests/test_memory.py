"""Device memory readings: real numbers on the CPU, the CUDA path with a fake NVML (this machine has no GPU)."""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch

from backend import memory
from backend.memory import DeviceMemory, read_device_memory

GiB = 1024 ** 3


def test_cpu_reading_is_this_process_out_of_machine_ram():
    m = read_device_memory("cpu")
    assert isinstance(m, DeviceMemory)
    assert (m.kind, m.device, m.source) == ("cpu", "cpu", "process")
    assert m.utilization_pct is None
    assert m.used_bytes == m.process_rss_bytes > 10 * 1024 ** 2  # python + torch is well over 10 MiB
    assert m.total_bytes == psutil.virtual_memory().total > m.used_bytes
    assert (m.torch_allocated_bytes, m.torch_reserved_bytes) == (0, 0)
    assert m.name and 0 < m.used_fraction < 1


def test_cpu_rss_grows_with_a_big_allocation():
    before = read_device_memory(torch.device("cpu")).process_rss_bytes
    big = torch.ones(64 * 1024 ** 2 // 4)  # 64 MiB, touched
    after = read_device_memory(torch.device("cpu")).process_rss_bytes
    assert after - before > 32 * 1024 ** 2
    del big


@pytest.mark.parametrize("bad", ["mps", "not-a-device"])
def test_unsupported_device_is_a_value_error(bad):
    with pytest.raises(ValueError, match="device"):
        read_device_memory(bad)


class FakeNVMLError(Exception):
    pass


def fake_pynvml(*, fail_init=False, util=37, name="NVIDIA H100 80GB HBM3"):
    """A stand-in for the 5 pynvml calls the module makes; records which device index it was asked for."""
    mod = types.ModuleType("pynvml")
    mod.NVMLError = FakeNVMLError
    mod.asked = []

    def init():
        if fail_init:
            raise FakeNVMLError("NVML Shared Library Not Found")

    def handle(i):
        mod.asked.append(i)
        return f"handle{i}"

    mod.nvmlInit = init
    mod.nvmlDeviceGetHandleByIndex = handle
    mod.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(total=80 * GiB, used=30 * GiB, free=50 * GiB)
    mod.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=util, memory=12)
    mod.nvmlDeviceGetName = lambda h: name
    return mod


@pytest.fixture
def use_pynvml(monkeypatch):
    """Install a fake `pynvml` for one test; the module re-initialises NVML when it sees a new module."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def install(mod):
        monkeypatch.setitem(sys.modules, "pynvml", mod)
        return mod

    yield install
    memory._nvml_ready = None


def test_cuda_reading_comes_from_nvml(use_pynvml):
    nvml = use_pynvml(fake_pynvml())
    m = read_device_memory("cuda:1")
    assert nvml.asked == [1]
    assert (m.device, m.kind, m.source, m.name) == ("cuda:1", "cuda", "nvml", "NVIDIA H100 80GB HBM3")
    assert (m.used_bytes, m.total_bytes, m.utilization_pct) == (30 * GiB, 80 * GiB, 37.0)
    assert m.process_rss_bytes > 0
    # torch's allocator is asked directly; with no CUDA in this process it holds nothing
    assert (m.torch_allocated_bytes, m.torch_reserved_bytes) == (0, 0)


def test_nvml_bytes_names_are_decoded(use_pynvml):
    use_pynvml(fake_pynvml(name=b"Tesla T4"))
    assert read_device_memory("cuda:0").name == "Tesla T4"


def test_cuda_visible_devices_maps_torch_index_to_nvml_index(use_pynvml, monkeypatch):
    nvml = use_pynvml(fake_pynvml())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert read_device_memory("cuda:1").device == "cuda:1"
    assert nvml.asked == [5]


def test_nvml_failure_falls_back_to_torch_cuda(use_pynvml, monkeypatch):
    use_pynvml(fake_pynvml(fail_init=True))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (6 * GiB, 16 * GiB))  # (free, total)
    m = read_device_memory("cuda:0")
    assert (m.kind, m.source, m.utilization_pct) == ("cuda", "torch.cuda", None)
    assert (m.used_bytes, m.total_bytes) == (10 * GiB, 16 * GiB)


def test_no_nvml_and_no_cuda_raises(use_pynvml, monkeypatch):
    use_pynvml(fake_pynvml(fail_init=True))

    def no_cuda(i):
        raise RuntimeError("Torch not compiled with CUDA enabled")

    monkeypatch.setattr(torch.cuda, "mem_get_info", no_cuda)
    with pytest.raises(RuntimeError, match="cuda:0"):
        read_device_memory("cuda:0")


def test_backend_memory_imports_nothing_from_the_app_side():
    """Every import in the module, top level or lazy (a static check: a subprocess import costs seconds)."""
    tree = ast.parse(Path(memory.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {name.split(".")[0] for name in names} & {"textual", "app", "storage", "aiosqlite"}, names
