"""What the GPU a run trains on is doing: how busy it is, its memory (every process's, as nvidia-smi
counts it), its temperature and power draw. Read through NVML, NVIDIA's library that nvitop and
gpustat read too (the nvidia-ml-py package), by the trainer about once a second, and published in
status.json, so a watcher on another machine sees it as well. Without NVML (a CPU, Apple's GPU, a
machine without NVIDIA's driver library) there is nothing to read, and nothing is said.
"""

from __future__ import annotations

import importlib
import math
import time
from typing import Any, Callable

import torch

SECONDS = 1.0  # how often NVML is asked
FIELDS = ("busy", "memory_used", "memory_total", "temperature", "power")  # a reading's, in this order


class GpuMeter:
    def __init__(self, device: torch.device, nvml: Any = None) -> None:
        """`nvml`: the pynvml module, or a stand-in (tests); imported on the first reading otherwise."""
        self.device, self._nvml = device, nvml
        self._handle: Any = None
        self._off = device.type != "cuda"
        self._asked = -math.inf
        self._reading: dict[str, float | None] | None = None

    def read(self) -> dict[str, float | None] | None:
        """The latest reading (asked afresh at most once a second), or None when there is none to take."""
        now = time.monotonic()
        if self._off or now - self._asked < SECONDS:
            return self._reading
        self._asked = now
        try:
            nvml = self._nvml = self._nvml or importlib.import_module("pynvml")
            if self._handle is None:
                nvml.nvmlInit()
                self._handle = self._find(nvml)
            busy = nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            memory = nvml.nvmlDeviceGetMemoryInfo(self._handle)
        except Exception:  # no package, no driver library, a GPU NVML cannot read: quietly nothing
            self._off, self._reading = True, None
            return None
        self._reading = {
            "busy": float(busy),
            "memory_used": float(memory.used),
            "memory_total": float(memory.total),
            "temperature": _maybe(lambda: nvml.nvmlDeviceGetTemperature(self._handle, nvml.NVML_TEMPERATURE_GPU)),
            "power": _maybe(lambda: nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000),
        }  # milliwatts
        return self._reading

    def _find(self, nvml: Any) -> Any:
        """NVML's handle of this run's GPU. CUDA numbers the GPUs this process sees (CUDA_VISIBLE_DEVICES,
        fastest first), NVML all of them in bus order, so they are matched by the GPU's UUID."""
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        try:
            return nvml.nvmlDeviceGetHandleByUUID(f"GPU-{torch.cuda.get_device_properties(index).uuid}")
        except Exception:  # an older torch without the UUID, or a spelling NVML does not take: by number
            mapped = getattr(torch.cuda, "_get_nvml_device_index", None)
            return nvml.nvmlDeviceGetHandleByIndex(mapped(index) if mapped is not None else index)


def _maybe(read: Callable[[], float]) -> float | None:
    """A field some GPUs do not report (power on some boards): None, and the rest still shown."""
    try:
        return float(read())
    except Exception:
        return None


def as_floats(reading: dict[str, float | None] | None) -> list[float]:
    """A reading as numbers to add into the ranks' agreement: all zero for none, NaN for a field not reported."""
    if reading is None:
        return [0.0] * len(FIELDS)
    values = [reading[name] for name in FIELDS]
    return [math.nan if value is None else float(value) for value in values]


def from_floats(values: list[float]) -> dict[str, float | None] | None:
    """Back from `as_floats`: None where a rank had no reading (no memory total)."""
    if not values[FIELDS.index("memory_total")] > 0:
        return None
    return {name: None if math.isnan(v) else float(v) for name, v in zip(FIELDS, values)}
