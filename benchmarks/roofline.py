"""Decode step time against the memory-bandwidth bound (the roofline model).

A decode step multiplies a thin `[rows, hidden]` activation by every weight matrix and attends over the
cached K/V, so at serving batch sizes it is limited by memory traffic, not arithmetic: it cannot take less
than `(weight bytes + KV bytes read) / peak memory bandwidth` (Williams, Waterman, Patterson, "Roofline", CACM
2009; the same bound vLLM's and TensorRT-LLM's decode analyses use). The ratio `measured / bound` says how far
a step is from the hardware: 1.0 is the best possible, 2.0 means half the bandwidth is wasted.

- Weight bytes read per step: every parameter once, except an input embedding that is not tied to the output
  head (a lookup reads only `rows` of its rows).
- KV bytes read per step: what the step's attention reads. In `RunningBatch`'s padded window that is
  `rows x (S + 1)` tokens, or with ragged decode attention the sum over row groups of `rows x width`
  (`backend/attention.py`); the live part alone (`sum(lengths) + rows` tokens) is reported beside it.
- Peak bandwidth: on CUDA the nominal one from NVML (`2 x memory clock x bus width`, the DDR/HBM formula that
  gives 3.35 TB/s for an H100 SXM) and a measured device-to-device copy; on CPU the measured copy only
  (`copy_` of a 512 MiB tensor: bytes read + bytes written over the time, best of 5).
"""

from __future__ import annotations

import time

import torch

COPY_BYTES = 512 * 2**20


def weight_bytes_read(model: torch.nn.Module) -> int:
    """Bytes of weights one decode step reads (shared/tied tensors counted once)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if head is None or head.weight.data_ptr() != embed.data_ptr():
        total -= embed.numel() * embed.element_size()
    return total


def measured_copy_bandwidth(device: torch.device, nbytes: int = COPY_BYTES, repeats: int = 5) -> float:
    """Best `copy_` bandwidth over `repeats` copies of `nbytes` (bytes/s, read + write both counted)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch / warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def nominal_bandwidth(device: torch.device) -> float | None:
    """The GPU's nominal memory bandwidth from NVML (bytes/s), or None (CPU, no NVML)."""
    if device.type != "cuda":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            index = device.index if device.index is not None else torch.cuda.current_device()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
            bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML (driver, MIG, container): the measured copy still stands
        return None
    return 2 * clock_mhz * 1e6 * bus_bits / 8


def peak_bandwidth(device: torch.device) -> dict:
    """The bandwidths the bound is computed against (bytes/s) and which one is used."""
    measured = measured_copy_bandwidth(device)
    nominal = nominal_bandwidth(device)
    used, source = (nominal, "nominal (NVML)") if nominal else (measured, "measured copy")
    return {"measured_copy_bytes_per_s": measured, "nominal_bytes_per_s": nominal,
            "peak_bytes_per_s": used, "peak_source": source}


def decode_roofline(steps: list[tuple[float, int, int]], weight_bytes: int, bandwidth: dict) -> dict:
    """Compare measured decode steps with the bound.

    Args:
        steps: per decode step `(seconds, kv bytes read, live kv bytes)`.
        weight_bytes: `weight_bytes_read(model)`.
        bandwidth: `peak_bandwidth(device)`.
    Returns:
        means over the steps (ms and bytes), the bound in ms for the KV actually read and for the live KV
        only, and `step_over_bound` (measured / bound; None without steps).
    """
    bw = bandwidth["peak_bytes_per_s"]
    if not steps:
        return {**bandwidth, "weight_bytes": weight_bytes, "num_steps": 0, "step_over_bound": None}
    n = len(steps)
    step_ms = 1000 * sum(s for s, _, _ in steps) / n
    kv_read = sum(r for _, r, _ in steps) / n
    kv_live = sum(v for _, _, v in steps) / n
    bound_ms = 1000 * (weight_bytes + kv_read) / bw
    live_bound_ms = 1000 * (weight_bytes + kv_live) / bw
    return {**bandwidth, "weight_bytes": weight_bytes, "num_steps": n, "decode_step_ms_mean": step_ms,
            "kv_read_bytes_mean": kv_read, "kv_live_bytes_mean": kv_live, "bound_ms": bound_ms,
            "live_bound_ms": live_bound_ms, "step_over_bound": step_ms / bound_ms,
            "achieved_bytes_per_s": (weight_bytes + kv_read) / (step_ms / 1000)}
