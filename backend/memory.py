"""Device memory readings for the engine's device: NVML on CUDA (torch.cuda as fallback), the process on CPU.

`read_device_memory(device)` returns a `DeviceMemory` snapshot. It is cheap (a few NVML queries, or one
`/proc` read through psutil), so a UI can call it twice a second. On the CPU there is no device memory to
report: the numbers are this process's resident set size out of the machine's RAM, labelled `kind="cpu"`
and `source="process"`, never dressed up as GPU memory.

NVML counts every process on the GPU; `torch_allocated_bytes` / `torch_reserved_bytes` are this process's
share as torch's caching allocator sees it.

Importing this module does not import torch (it is imported by the first reading): a front end can name
`DeviceMemory` and `read_device_memory` before the model is loaded without paying seconds for torch.
"""

from __future__ import annotations

import functools
import os
import platform
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    import torch

__all__ = ["DeviceMemory", "read_device_memory"]


@dataclass(frozen=True)
class DeviceMemory:
    """One reading of a device's memory.

    Attributes:
        device: the torch device it describes, e.g. `"cuda:0"` or `"cpu"`.
        name: the GPU's name (e.g. `"NVIDIA H100 80GB HBM3"`) or the CPU model string.
        kind: `"cuda"` or `"cpu"`.
        used_bytes, total_bytes: on CUDA the whole GPU's used and total memory (bytes, all processes);
            on CPU this process's resident set size and the machine's total RAM (bytes).
        utilization_pct: GPU utilisation over NVML's last sample period (%, 0-100); None on CPU or when
            NVML is unavailable.
        process_rss_bytes: this process's resident set size (bytes).
        torch_allocated_bytes, torch_reserved_bytes: bytes held by tensors / reserved by torch's CUDA caching
            allocator in this process (bytes); 0 on CPU.
        source: where `used_bytes`/`total_bytes` came from: `"nvml"`, `"torch.cuda"` or `"process"`.
    """

    device: str
    name: str
    kind: str
    used_bytes: int
    total_bytes: int
    utilization_pct: float | None
    process_rss_bytes: int
    torch_allocated_bytes: int
    torch_reserved_bytes: int
    source: str

    @property
    def used_fraction(self) -> float:
        """`used_bytes / total_bytes` in [0, 1] (0 when the total is unknown)."""
        return min(1.0, self.used_bytes / self.total_bytes) if self.total_bytes > 0 else 0.0


def read_device_memory(device: torch.device | str) -> DeviceMemory:
    """Read the memory of `device` now.

    Args:
        device: a torch device or its string: `"cpu"`, `"cuda"` (the current CUDA device) or `"cuda:N"`.
    Returns:
        A `DeviceMemory` (all sizes in bytes, utilisation in %).
        CUDA: NVML (`pynvml`, initialised once per process) gives used/total/utilisation/name; if NVML is
        missing or fails, `torch.cuda.mem_get_info` gives used/total (`source="torch.cuda"`, utilisation None).
        CPU: used = this process's RSS, total = the machine's RAM (`source="process"`).
    Raises:
        ValueError: `device` is not a CPU or CUDA device (or not a device string at all).
        RuntimeError: a CUDA device whose memory neither NVML nor torch.cuda can read.
    """
    import torch  # here, not at the top: naming this function must not import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: expected a 'cpu' or 'cuda' device, got {device!r}") from exc
    rss = _process().memory_info().rss
    if dev.type == "cpu":
        return DeviceMemory("cpu", _cpu_name(), "cpu", rss, psutil.virtual_memory().total, None, rss, 0, 0,
                            "process")
    if dev.type != "cuda":
        raise ValueError(f"device: expected a 'cpu' or 'cuda' device, got {str(dev)!r}")
    index = dev.index if dev.index is not None else (torch.cuda.current_device() if torch.cuda.is_available() else 0)
    allocated, reserved = torch.cuda.memory_allocated(index), torch.cuda.memory_reserved(index)
    reading = _read_nvml(index)
    if reading is not None:
        name, used, total, util = reading
        return DeviceMemory(f"cuda:{index}", name, "cuda", used, total, util, rss, allocated, reserved, "nvml")
    try:
        free, total = torch.cuda.mem_get_info(index)
    except Exception as exc:  # no driver, no such device, CUDA error
        raise RuntimeError(f"cannot read memory of cuda:{index}: NVML and torch.cuda both failed ({exc})") from exc
    return DeviceMemory(f"cuda:{index}", _torch_cuda_name(index), "cuda", total - free, total, None, rss,
                        allocated, reserved, "torch.cuda")


# ------------------------------------------------------------------------------------------ NVML
_nvml_lock = threading.Lock()
_nvml_ready: tuple[object, bool] | None = None  # (the pynvml module initialised, whether nvmlInit worked)


def _nvml_module():
    """The initialised `pynvml` module, or None when it is missing or `nvmlInit` failed (tried once)."""
    global _nvml_ready
    try:
        import pynvml
    except ImportError:
        return None
    with _nvml_lock:
        if _nvml_ready is None or _nvml_ready[0] is not pynvml:
            try:
                pynvml.nvmlInit()
                _nvml_ready = (pynvml, True)
            except Exception:  # NVMLError (no driver, no GPU, no permission)
                _nvml_ready = (pynvml, False)
        return pynvml if _nvml_ready[1] else None


def _read_nvml(index: int) -> tuple[str, int, int, float | None] | None:
    """(name, used bytes, total bytes, utilisation %) of CUDA device `index`, or None if NVML can't say."""
    nvml = _nvml_module()
    if nvml is None:
        return None
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(_nvml_index(index))
        mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        name = nvml.nvmlDeviceGetName(handle)
    except Exception:  # NVMLError: lost GPU, bad index, driver mismatch
        return None
    try:
        util: float | None = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:  # not supported on some devices (MIG slices): memory is still good
        util = None
    if isinstance(name, bytes):  # older pynvml returns bytes
        name = name.decode(errors="replace")
    return str(name), int(mem.used), int(mem.total), util


def _nvml_index(torch_index: int) -> int:
    """NVML numbers every GPU on the machine; torch numbers those in `CUDA_VISIBLE_DEVICES`. Map one to the
    other when that variable lists plain indices (UUID lists fall back to the torch index)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if torch_index < len(visible) and visible[torch_index].isdigit():
        return int(visible[torch_index])
    return torch_index


# --------------------------------------------------------------------------------- the host side
@functools.cache
def _process() -> psutil.Process:
    return psutil.Process()


@functools.cache
def _cpu_name() -> str:
    """The CPU model string (`/proc/cpuinfo` on Linux, `platform.processor()` elsewhere), or "CPU"."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() or "CPU"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def _torch_cuda_name(index: int) -> str:
    import torch

    try:
        return torch.cuda.get_device_name(index)
    except Exception:  # the name is cosmetic: never fail a memory reading over it
        return f"cuda:{index}"
