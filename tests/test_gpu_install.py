"""The README's GPU install, run in a fresh virtual environment (no system site-packages).

What is proven: the documented command ends with one ONNX Runtime, the GPU build, which
lists the CUDA provider, and no PyTorch; ``segment --demo`` with the default ``--device
auto`` runs on the CPU of a machine without a GPU and records it, with no provider errors;
with the CPU build installed again next to it, ``segment`` stops with one line naming the
repair, ``--device cpu`` still runs, and that repair gives the GPU build back.

The command runs without the ``cuda`` and ``cudnn`` extras of ``onnxruntime-gpu`` (about
1.3 GB of CUDA and cuDNN pip packages that a machine without a GPU cannot use); the
ONNX Runtime wheel itself (255 MB) is installed. Needs the package index; takes about two
minutes, most of it installing numpy, scipy, numba and scikit-image and compiling the
assembly kernels once.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ppp_zoo.runtime import doctor

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = re.compile(r"\[cuda,cudnn\]")


def _readme_gpu_command() -> str:
    """The one-line GPU install of the README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines()
             if line.startswith("pip install") and "pip uninstall -y onnxruntime &&" in line]
    assert len(lines) == 1, "README: expected one GPU install command"
    return lines[0]


class FreshVenv:
    """A virtual environment in ``folder`` and the commands run in it."""

    def __init__(self, folder: Path, project: Path):
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        bin_dir = folder / ("Scripts" if os.name == "nt" else "bin")
        self.python, self.project, self.timings = bin_dir / "python", project, []
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "NUMBA_CACHE_DIR")}
        self.env["PATH"] = f"{bin_dir}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["VIRTUAL_ENV"] = str(folder)

    def run(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
        t0 = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True, env=self.env,
                              cwd=self.project.parent, timeout=600, check=False)
        self.timings.append((" ".join(Path(a).name for a in args[:4]),
                             round(time.perf_counter() - t0, 1)))
        if check:
            assert done.returncode == 0, f"{args}: {done.stderr[-3000:]}"
        return done

    def shell_command(self, command: str) -> None:
        """Run a ``cmd && cmd`` line of ``pip`` / ``ppp-zoo`` steps, without the CUDA extras."""
        for step in command.split("&&"):
            words = [EXTRAS.sub("", w) for w in shlex.split(step)]
            if words[0] == "pip":
                words = [str(self.python), "-m", "pip", *words[1:]]
                if words[3] == "install":
                    words[4:4] = ["--quiet", "--no-compile"]
                words = [str(self.project) if w == "." else w for w in words]
            self.run(words)

    def python_json(self, code: str):
        return json.loads(self.run([str(self.python), "-c", code]).stdout)


def _copy_project(target: Path) -> Path:
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)
    shutil.copytree(ROOT / "ppp_zoo", target / "ppp_zoo",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    return target


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_readme_gpu_install_in_a_fresh_venv(tmp_path):
    t0 = time.perf_counter()
    venv = FreshVenv(tmp_path / "venv", _copy_project(tmp_path / "ppp-zoo"))
    venv.shell_command(_readme_gpu_command())  # install, swap the build, ppp-zoo doctor

    # one ONNX Runtime, the GPU build, with the CUDA provider; no torch
    providers = venv.python_json("import json, onnxruntime; "
                                 "print(json.dumps(onnxruntime.get_available_providers()))")
    assert "CUDAExecutionProvider" in providers
    report = json.loads(venv.run(["ppp-zoo", "doctor", "--json"]).stdout)
    assert list(report["onnxruntime"]["distributions"]) == ["onnxruntime-gpu"]
    assert report["onnxruntime"]["build"] == "onnxruntime-gpu" and report["torch"] is None
    assert report["warnings"] == []

    # segment falls back to the CPU cleanly where no GPU is visible
    out = tmp_path / "demo"
    done = venv.run(["ppp-zoo", "segment", "--demo", "-o", str(out), "--json"])
    summary = json.loads(done.stdout)
    assert summary["errors"] == [] and summary["images"][0]["n_instances"] > 0
    if not doctor.probe_gpu().visible:
        assert (summary["device"], summary["provider"]) == ("cpu", "CPUExecutionProvider")
        assert summary["device_note"] is None
        assert "Failed" not in done.stderr and "CUDA" not in done.stderr, done.stderr
    elif summary["device"] == "cpu":  # a GPU without the CUDA libraries: said so
        assert summary["device_note"]

    # the CPU build installed again next to it: one line naming the repair
    venv.run([str(venv.python), "-m", "pip", "install", "--quiet", "--no-deps", "onnxruntime"])
    done = venv.run(["ppp-zoo", "segment", "--demo", "-o", str(tmp_path / "mixed")],
                    check=False)
    assert done.returncode == 1
    [line] = _errors(done.stderr)
    assert "onnxruntime-gpu" in line and "keep only the GPU build: " in line
    venv.run(["ppp-zoo", "segment", "--demo", "-o", str(tmp_path / "cpu"), "--device", "cpu"])
    repair = line.split("keep only the GPU build: ")[1].split(" (or run")[0]
    venv.shell_command(repair)
    report = json.loads(venv.run(["ppp-zoo", "doctor", "--json"]).stdout)
    assert list(report["onnxruntime"]["distributions"]) == ["onnxruntime-gpu"]
    assert "CUDAExecutionProvider" in report["onnxruntime"]["providers"]

    seconds = time.perf_counter() - t0
    print(f"fresh-venv GPU install test: {seconds:.0f} s; steps: {venv.timings}")
