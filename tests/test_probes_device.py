"""device_info never fails: without NVML it says so; unreadable NVML fields become None + reason."""
import json
import subprocess
import sys
import types
from pathlib import Path

from probes import describe_device, device_info

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_without_nvml_the_record_says_so_and_describes_the_host(monkeypatch):
    broken = types.ModuleType("pynvml")

    def no_library():
        raise OSError("NVML Shared Library Not Found")

    broken.nvmlInit = no_library
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    record = device_info()
    assert record["nvidia"] is False
    assert "NVML Shared Library Not Found" in record["reason"]
    host = record["host"]
    assert host["hostname"] and host["cpu_model"] and host["cpu_count"] >= 1
    json.dumps(record)
    assert "no NVIDIA GPU" in describe_device(record)


class _NVMLError(Exception):
    pass


def fake_nvml():
    """A two-GPU NVML in which the serial and the power draw cannot be read."""
    nvml = types.ModuleType("pynvml")
    nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM, nvml.NVML_TEMPERATURE_GPU = 1, 2, 0
    calls = []

    def unsupported(*_):
        raise _NVMLError("Not Supported")

    nvml.nvmlInit = lambda: calls.append("init")
    nvml.nvmlShutdown = lambda: calls.append("shutdown")
    nvml.nvmlSystemGetDriverVersion = lambda: b"550.54.15"
    nvml.nvmlSystemGetCudaDriverVersion = lambda: 12040
    nvml.nvmlDeviceGetCount = lambda: 2
    nvml.nvmlDeviceGetHandleByIndex = lambda i: f"h{i}"
    nvml.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    nvml.nvmlDeviceGetUUID = lambda h: f"GPU-0000-{h}"
    nvml.nvmlDeviceGetSerial = unsupported
    nvml.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=b"00000000:19:00.0")
    nvml.nvmlDeviceGetCudaComputeCapability = lambda h: (9, 0)
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=85520809984)
    nvml.nvmlDeviceGetClockInfo = lambda h, kind: {1: 1980, 2: 2619}[kind]
    nvml.nvmlDeviceGetMaxClockInfo = lambda h, kind: {1: 1980, 2: 2619}[kind]
    nvml.nvmlDeviceGetTemperature = lambda h, sensor: 33
    nvml.nvmlDeviceGetPowerUsage = unsupported
    nvml.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700000
    nvml.nvmlDeviceGetEccMode = lambda h: (1, 1)
    nvml.nvmlDeviceGetPersistenceMode = lambda h: 1
    return nvml, calls


def test_unreadable_fields_are_none_with_a_reason(monkeypatch):
    nvml, calls = fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    record = device_info()
    assert record["nvidia"] is True and calls == ["init", "shutdown"]
    assert record["driver_version"] == "550.54.15" and record["cuda_driver_version"] == "12.4"
    assert len(record["gpus"]) == 2
    gpu = record["gpus"][1]
    assert gpu["index"] == 1 and gpu["name"] == "NVIDIA H100 80GB HBM3" and gpu["uuid"] == "GPU-0000-h1"
    assert gpu["compute_capability"] == "9.0" and gpu["power_limit_w"] == 700.0
    assert gpu["ecc_mode"] == {"current": True, "pending": True} and gpu["persistence_mode"] is True
    assert gpu["serial"] is None and "Not Supported" in gpu["unreadable"]["serial"]
    assert gpu["power_draw_w"] is None and "Not Supported" in gpu["unreadable"]["power_draw_w"]
    # this fake GPU is not one torch can see, so the SM count is unreadable, not invented
    assert gpu["sm_count"] is None and gpu["unreadable"]["sm_count"]
    json.dumps(record)
    assert "H100" in describe_device(record) and "550.54.15" in describe_device(record)


def test_importing_probes_touches_neither_cuda_nor_triton():
    script = "import sys, torch, probes; print(torch.cuda.is_initialized(), 'triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.split() == ["False", "False"], out
