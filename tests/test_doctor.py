"""``ppp-zoo doctor``, the device choice of the ONNX engine and the check for two ONNX
Runtime builds, on this (GPU-less) machine.

What is proven: the doctor report is complete as text and JSON and never raises; the GPU
probe reads a (fake) CUDA driver correctly and reports why no GPU is visible; the CUDA
check runs in a child process and reports failures instead of raising; with two ONNX
Runtime builds installed, ``segment`` answers one line naming the repair command (and
``--device cpu`` still runs); ``--device cuda`` without a CUDA provider or without a GPU is
one error line and exit code 1; ``--device auto`` records the device and provider in the
summary, and when a GPU is visible but the CUDA provider does not start it runs on the
CPU and says why.
"""

from __future__ import annotations

import ctypes
import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from ppp_zoo.cli import app
from ppp_zoo.io import write_image
from ppp_zoo.runtime import doctor

runner = CliRunner()
BOTH = (("onnxruntime", "1.32.0"), ("onnxruntime-gpu", "1.31.1"))


def _has_cuda_provider() -> bool:
    import onnxruntime

    return doctor.CUDA_PROVIDER in onnxruntime.get_available_providers()


cpu_build = pytest.mark.skipif(_has_cuda_provider(), reason="needs the CPU build of ONNX Runtime")


def _errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def small_image(tmp_path):
    rng = np.random.default_rng(0)
    return write_image(tmp_path / "cells.tif", (rng.random((96, 96)) * 1000).astype(np.uint16))


@pytest.fixture
def fake_gpu(monkeypatch):
    """A visible GPU and an ONNX Runtime that lists the CUDA provider (it cannot start it)."""
    import onnxruntime

    providers = ["CUDAExecutionProvider", *onnxruntime.get_available_providers()]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    monkeypatch.setattr(doctor, "probe_gpu",
                        lambda: doctor.GpuProbe(True, ("Fake GPU, 8.0 GiB",), "13.0"))


# --------------------------------------------------------------------------- ONNX Runtime builds
def test_installed_onnxruntime_is_found_from_package_metadata():
    import onnxruntime

    dists = dict(doctor.onnxruntime_distributions())
    assert onnxruntime.package_name in dists
    assert "onnxruntime-extensions" not in dists  # its own module, no conflict


def test_conflict_sentence_names_every_build_and_one_repair_command():
    assert doctor.onnxruntime_conflict(()) is None
    text = doctor.onnxruntime_conflict(BOTH)
    assert "\n" not in text and "--device cpu" in text
    assert ('keep only the GPU build: pip uninstall -y onnxruntime onnxruntime-gpu && '
            'pip install "onnxruntime-gpu[cuda,cudnn]"') in text
    three = doctor.onnxruntime_conflict(BOTH + (("onnxruntime-directml", "1.31.0"),))
    assert "pip uninstall -y onnxruntime onnxruntime-directml onnxruntime-gpu &&" in three
    other = doctor.onnxruntime_conflict((("onnxruntime", "1"), ("onnxruntime-openvino", "1")))
    assert "pip uninstall -y onnxruntime onnxruntime-openvino && pip install onnxruntime-openvino" \
        in other


# --------------------------------------------------------------------------- GPU probe
class _FakeDriver:
    """The few CUDA driver calls the probe makes; writes its answers through ctypes.byref."""

    def __init__(self, init_code=0, names=(b"Fake GPU A", b"Fake GPU B")):
        self.init_code, self.names = init_code, names

    def cuDriverGetVersion(self, ref):
        ref._obj.value = 13000
        return 0

    def cuInit(self, flags):
        return self.init_code

    def cuDeviceGetCount(self, ref):
        ref._obj.value = len(self.names)
        return 0

    def cuDeviceGet(self, ref, i):
        ref._obj.value = i
        return 0

    def cuDeviceGetName(self, buf, size, handle):
        buf.value = self.names[handle.value]
        return 0

    def cuDeviceTotalMem_v2(self, ref, handle):
        ref._obj.value = 8 * 2**30
        return 0

    def cuGetErrorString(self, code, ref):
        ref._obj.value = b"no CUDA-capable device is detected"
        return 0


def test_gpu_probe_reads_devices_and_driver_version(monkeypatch):
    monkeypatch.setattr(ctypes, "CDLL", lambda name: _FakeDriver())
    probe = doctor._probe_gpu()
    assert probe == doctor.GpuProbe(True, ("Fake GPU A, 8.0 GiB", "Fake GPU B, 8.0 GiB"), "13.0")


def test_gpu_probe_says_why_no_gpu_is_visible(monkeypatch):
    monkeypatch.setattr(ctypes, "CDLL", lambda name: _FakeDriver(init_code=100))
    probe = doctor._probe_gpu()
    assert not probe.visible and probe.driver_cuda == "13.0"
    assert "CUDA error 100: no CUDA-capable device is detected" in probe.reason

    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert not doctor._probe_gpu().visible and "driver" in doctor._probe_gpu().reason


def test_gpu_probe_of_this_machine_never_raises():
    probe = doctor.probe_gpu()
    assert probe.visible == bool(probe.devices) and probe.visible != bool(probe.reason)


# --------------------------------------------------------------------------- CUDA session check
def test_cuda_check_is_skipped_without_provider_or_gpu():
    ort = doctor.onnxruntime_info()
    no_gpu = doctor.GpuProbe(False, reason="no NVIDIA driver")
    check = doctor.check_cuda_session(ort, no_gpu)
    assert not check.tried and not check.ok and check.detail


def test_cuda_check_reports_a_failing_provider_without_raising():
    """The child process creates a CUDA session; on this machine it fails, and says why."""
    ort = doctor.OrtInfo("1", "onnxruntime-gpu", "13.0",
                         ("CUDAExecutionProvider", "CPUExecutionProvider"), ())
    gpu = doctor.GpuProbe(True, ("Fake GPU",), "13.0")
    check = doctor.check_cuda_session(ort, gpu)
    assert check.tried and not check.ok and check.seconds is not None
    assert "--device cuda" in check.detail, check.detail
    late = doctor.check_cuda_session(ort, gpu, timeout=0.01)
    assert late.tried and not late.ok and "no answer within" in late.detail


# --------------------------------------------------------------------------- doctor command
def test_doctor_json_and_text():
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"ppp_zoo", "python", "platform", "onnxruntime", "gpu", "cuda_libraries",
            "cuda_session", "auto_device", "numba", "torch", "numpy", "warnings"} <= set(report)
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]
    assert report["numba"]["version"] and report["numba"]["cache_dir"]
    text = runner.invoke(app, ["doctor"])
    assert text.exit_code == 0, text.output
    for key in ("onnxruntime:", "providers:", "GPU:", "CUDA libraries:",
                "segment --device auto:", "numba:", "torch:", "python:"):
        assert key in text.stdout


def test_doctor_warns_about_two_onnxruntime_builds(monkeypatch):
    monkeypatch.setattr(doctor, "onnxruntime_distributions", lambda: BOTH)
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "warning: onnxruntime 1.32.0 and onnxruntime-gpu 1.31.1" in result.stdout
    assert doctor.repair_command(BOTH) in result.stdout and "refuses to run" in result.stdout


# --------------------------------------------------------------------------- segment devices
def test_segment_with_two_onnxruntime_builds_is_one_error_naming_the_repair(
        monkeypatch, small_image, tmp_path):
    monkeypatch.setattr(doctor, "onnxruntime_distributions", lambda: BOTH)
    for device in ("auto", "cuda"):
        result = runner.invoke(app, ["segment", str(small_image), "-o", str(tmp_path / device),
                                     "--device", device])
        assert result.exit_code == 1
        assert _errors(result) == [f"error: {doctor.onnxruntime_conflict(BOTH)}"]
        assert not (tmp_path / device / "cells_labels.tif").exists()
    result = runner.invoke(app, ["segment", str(small_image), "-o", str(tmp_path / "cpu"),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output


@cpu_build
def test_device_cuda_without_cuda_provider_is_one_error(small_image, tmp_path):
    result = runner.invoke(app, ["segment", str(small_image), "-o", str(tmp_path / "o"),
                                 "--device", "cuda"])
    assert result.exit_code == 1
    [line] = _errors(result)
    assert "--device cuda: this ONNX Runtime" in line and doctor.GPU_INSTALL in line


def test_device_cuda_without_gpu_is_one_error(monkeypatch, small_image, tmp_path):
    import onnxruntime

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    no_gpu = doctor.GpuProbe(False, reason="no NVIDIA driver (libcuda not found)")
    monkeypatch.setattr(doctor, "probe_gpu", lambda: no_gpu)
    result = runner.invoke(app, ["segment", str(small_image), "-o", str(tmp_path / "o"),
                                 "--device", "cuda"])
    assert result.exit_code == 1
    assert _errors(result) == ["error: --device cuda: no usable GPU: no NVIDIA driver "
                               "(libcuda not found)"]


def test_auto_records_device_and_provider_in_the_summary(small_image, tmp_path):
    out = tmp_path / "o"
    result = runner.invoke(app, ["segment", str(small_image), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    device, provider = summary["device"], summary["provider"]
    assert (device, provider) in (("cpu", "CPUExecutionProvider"),
                                  ("cuda", "CUDAExecutionProvider"))
    if not doctor.probe_gpu().visible:
        assert device == "cpu" and summary["device_note"] is None
    assert json.loads((out / "segment_summary.json").read_text())["provider"] == provider
    assert f"device: {device} (onnx, {provider})" in result.stderr


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_auto_falls_back_to_the_cpu_and_says_why(fake_gpu, small_image, tmp_path):
    result = runner.invoke(app, ["segment", str(small_image), "-o", str(tmp_path / "a"),
                                 "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["device"] == "cpu" and summary["provider"] == "CPUExecutionProvider"
    assert "the CUDA provider could not start" in summary["device_note"]
    assert f"note: {summary['device_note']}" in result.stderr


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_device_cuda_when_the_provider_does_not_start_is_one_error(fake_gpu, small_image,
                                                                   tmp_path):
    result = runner.invoke(app, ["segment", str(small_image), "-o", str(tmp_path / "c"),
                                 "--device", "cuda"])
    assert result.exit_code == 1
    [line] = _errors(result)
    assert line.startswith("error: --device cuda: the CUDA provider could not start")


@cpu_build
def test_auto_with_a_cpu_build_and_a_visible_gpu_says_how_to_get_the_gpu_build(
        monkeypatch, small_image, tmp_path):
    monkeypatch.setattr(doctor, "probe_gpu", lambda: doctor.GpuProbe(True, ("Fake GPU",), "13.0"))
    result = runner.invoke(app, ["segment", str(small_image), "-o", str(tmp_path / "o"),
                                 "--json"])
    assert result.exit_code == 0, result.output
    note = json.loads(result.stdout)["device_note"]
    assert "CPU build" in note and doctor.GPU_INSTALL in note


def test_a_half_removed_onnxruntime_is_one_error_and_a_doctor_warning(monkeypatch, small_image,
                                                                      tmp_path):
    """What uninstalling one of two builds leaves: a module without its files."""
    import types

    monkeypatch.setitem(sys.modules, "onnxruntime", types.ModuleType("onnxruntime"))
    result = runner.invoke(app, ["segment", str(small_image), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    [line] = _errors(result)
    assert line.startswith("error: ONNX Runtime cannot be used (AttributeError")
    assert line.endswith(f"reinstall it: {doctor.repair_command()}")
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["onnxruntime"]["error"] and report["auto_device"].startswith("cannot run")
    assert any("reinstall it" in w for w in report["warnings"])
