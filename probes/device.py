"""What machine a measurement ran on: host, torch build and every NVIDIA GPU as NVML sees it.

`device_info()` never raises: a field NVML (or torch) cannot read is recorded as None and the
reason is kept under "unreadable". Without an NVIDIA driver the record says so plainly
({"nvidia": False, "reason": ...}) and still describes the host. CUDA is touched only when the
function is called, never at import.
"""
from __future__ import annotations

import os
import platform
import socket

import torch


def _call(fn, *args):
    """(value, None) on success, (None, reason) when the read fails for any reason."""
    try:
        return fn(*args), None
    except Exception as error:  # noqa: BLE001 - every failure becomes a recorded reason
        return None, f"{type(error).__name__}: {error}"


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict:
    """Host name, CPU, core count, OS and the torch build (CUDA version it was built with)."""
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }


class _Fields:
    """Collects named reads into a record, keeping the reason for each one that failed."""

    def __init__(self):
        self.record: dict = {}
        self.unreadable: dict = {}

    def read(self, name: str, fn, *args, convert=None):
        value, reason = _call(fn, *args)
        if reason is None and convert is not None:
            value, reason = _call(convert, value)
        self.record[name] = value
        if reason is not None:
            self.unreadable[name] = reason
        return value

    def result(self) -> dict:
        self.record["unreadable"] = self.unreadable
        return self.record


def _gpu_record(nvml, index: int) -> dict:
    fields = _Fields()
    fields.record["index"] = index
    handle, reason = _call(nvml.nvmlDeviceGetHandleByIndex, index)
    if handle is None:
        fields.unreadable["handle"] = reason
        return fields.result()
    clock = nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM
    fields.read("name", nvml.nvmlDeviceGetName, handle, convert=_text)
    fields.read("uuid", nvml.nvmlDeviceGetUUID, handle, convert=_text)
    fields.read("serial", nvml.nvmlDeviceGetSerial, handle, convert=_text)
    fields.read("pci_bus_id", nvml.nvmlDeviceGetPciInfo, handle, convert=lambda p: _text(p.busId))
    fields.read("compute_capability", nvml.nvmlDeviceGetCudaComputeCapability, handle,
                convert=lambda cc: f"{cc[0]}.{cc[1]}")
    fields.read("memory_total_bytes", nvml.nvmlDeviceGetMemoryInfo, handle, convert=lambda m: int(m.total))
    fields.read("sm_clock_mhz", nvml.nvmlDeviceGetClockInfo, handle, clock[0])
    fields.read("mem_clock_mhz", nvml.nvmlDeviceGetClockInfo, handle, clock[1])
    fields.read("max_sm_clock_mhz", nvml.nvmlDeviceGetMaxClockInfo, handle, clock[0])
    fields.read("max_mem_clock_mhz", nvml.nvmlDeviceGetMaxClockInfo, handle, clock[1])
    fields.read("temperature_c", nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
    fields.read("power_draw_w", nvml.nvmlDeviceGetPowerUsage, handle, convert=lambda mw: mw / 1000.0)
    fields.read("power_limit_w", nvml.nvmlDeviceGetEnforcedPowerLimit, handle, convert=lambda mw: mw / 1000.0)
    fields.read("ecc_mode", nvml.nvmlDeviceGetEccMode, handle,
                convert=lambda modes: {"current": bool(modes[0]), "pending": bool(modes[1])})
    fields.read("persistence_mode", nvml.nvmlDeviceGetPersistenceMode, handle, convert=bool)
    return fields.result()


def _uuid_key(uuid) -> str:
    """A UUID as NVML ("GPU-8c...") or torch ("8c...") writes it, in one comparable form."""
    text = str(uuid).lower()
    return text[4:] if text.startswith("gpu-") else text


def _torch_properties() -> dict:
    """torch's view of each visible CUDA device, keyed by normalised UUID."""
    by_uuid = {}
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        by_uuid[_uuid_key(props.uuid)] = {
            "torch_index": index,
            "sm_count": props.multi_processor_count,
            "torch_name": props.name,
            "torch_compute_capability": f"{props.major}.{props.minor}",
        }
    return by_uuid


def _add_torch_view(gpus: list[dict]) -> None:
    """Attach SM count etc. from torch to the NVML records (matched by UUID)."""
    if not torch.cuda.is_available():
        for gpu in gpus:
            gpu["sm_count"] = None
            gpu["unreadable"]["sm_count"] = "torch.cuda.is_available() is False"
        return
    props, reason = _call(_torch_properties)
    for gpu in gpus:
        match = (props or {}).get(_uuid_key(gpu.get("uuid")))
        if match is None:
            gpu["sm_count"] = None
            gpu["unreadable"]["sm_count"] = reason or "device not visible to torch (CUDA_VISIBLE_DEVICES?)"
        else:
            gpu.update(match)


def _cuda_driver_version(nvml) -> str:
    version = nvml.nvmlSystemGetCudaDriverVersion()
    return f"{version // 1000}.{version % 1000 // 10}"


def device_info() -> dict:
    """A JSON-ready record of the host and of every NVIDIA GPU; never raises."""
    record = {"host": host_info()}
    try:
        import pynvml as nvml

        nvml.nvmlInit()
    except Exception as error:  # noqa: BLE001 - no driver, no library: say so
        record.update(nvidia=False, reason=f"NVML unavailable ({type(error).__name__}: {error})")
        return record
    try:
        system = _Fields()
        system.read("driver_version", nvml.nvmlSystemGetDriverVersion, convert=_text)
        system.read("cuda_driver_version", _cuda_driver_version, nvml)
        count = system.read("gpu_count", nvml.nvmlDeviceGetCount)
        gpus = [_gpu_record(nvml, index) for index in range(count or 0)]
        _add_torch_view(gpus)
        record.update(nvidia=True, **system.result(), gpus=gpus)
    finally:
        _call(nvml.nvmlShutdown)
    return record


def describe_device(record: dict) -> str:
    """One line naming the machine of a device record: GPU names and driver, or the CPU."""
    if not isinstance(record, dict):
        raise TypeError(f"record must be a device record (a dict from device_info()), got {type(record).__name__}")
    if not record.get("nvidia"):
        host = record.get("host", {})
        return f"CPU {host.get('cpu_model')} x{host.get('cpu_count')} on {host.get('hostname')} (no NVIDIA GPU)"
    names = ", ".join(str(gpu.get("name")) for gpu in record.get("gpus", [])) or "no GPU"
    return f"{names}; driver {record.get('driver_version')}, CUDA {record.get('cuda_driver_version')}"


def device_rows(record: dict) -> list[dict]:
    """A device record as {"field", "value"} rows: host fields, then every GPU's (unreadable ones say why)."""
    rows = [{"field": f"host.{key}", "value": value} for key, value in record["host"].items()]
    if not record.get("nvidia"):
        return rows + [{"field": "nvidia", "value": False}, {"field": "reason", "value": record.get("reason")}]
    rows += [{"field": key, "value": record.get(key)} for key in ("driver_version", "cuda_driver_version", "gpu_count")]
    for gpu in record.get("gpus", []):
        rows += [{"field": f"gpu{gpu['index']}.{key}", "value": value}
                 for key, value in gpu.items() if key not in ("index", "unreadable")]
        rows += [{"field": f"gpu{gpu['index']}.{key}", "value": f"unreadable: {why}"}
                 for key, why in gpu.get("unreadable", {}).items()]
    return rows


def device_summary(record: dict) -> dict:
    """The fields that tell two machines apart: host, CPU, torch build, GPUs, driver."""
    host = record.get("host", {})
    gpus = record.get("gpus", [])
    return {"host": host.get("hostname"), "cpu": host.get("cpu_model"), "torch": host.get("torch"),
            "torch cuda": host.get("torch_cuda"), "gpu": ", ".join(str(g.get("name")) for g in gpus) or "none",
            "compute capability": ", ".join(str(g.get("compute_capability")) for g in gpus) or "-",
            "driver": record.get("driver_version"), "cuda driver": record.get("cuda_driver_version")}
