from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgetts import __version__

EDGETTS = [sys.executable, "-m", "edgetts.cli"]


def edgetts(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGETTS, *args], capture_output=True, text=True, env={**os.environ, **env})


def test_version():
    result = edgetts("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"edgetts {__version__}"


def test_help_lists_commands():
    result = edgetts("--help")
    assert result.returncode == 0 and "doctor" in result.stdout


@pytest.fixture(scope="module")
def doctor_json():
    """One `edgetts doctor --json` run (it imports every engine: seconds) shared by the doctor tests."""
    result = edgetts("doctor", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_doctor_json_reports_machine_and_engines(doctor_json):
    data = doctor_json
    assert data["cpu"]["logical_cores"] >= 1 and data["memory"]["total_gb"] > 0
    names = {c["name"]: c for c in data["components"]}
    assert {"llama-cpp-python", "onnxruntime", "torch"} <= set(names)
    for component in names.values():
        assert component["ok"] or component["fix"].startswith("pip install")
    if names["onnxruntime"]["ok"]:
        assert "CPUExecutionProvider" in data["onnxruntime"]["providers"]
    if names["llama-cpp-python"]["ok"]:
        assert isinstance(data["llama_cpp"]["gpu_offload"], bool)


def test_doctor_table_shows_every_component_and_its_fix(doctor_json):
    import io

    from rich.console import Console

    from edgetts.ui import print_doctor

    broken = dict(doctor_json, components=[*doctor_json["components"], {
        "name": "imaginary-runtime", "version": None, "ok": False, "purpose": "a test", "fix": "pip install imaginary"}])
    buffer = io.StringIO()
    print_doctor(broken, Console(file=buffer, width=200))
    out = buffer.getvalue()
    assert "component" in out and "llama-cpp-python" in out
    assert "imaginary-runtime" in out and "pip install imaginary" in out


def test_user_errors_print_one_line_and_debug_shows_the_traceback(tmp_path):
    missing = str(tmp_path / "nope.gguf")
    code = f"import edgetts.cli as c; c.app.command('x')(lambda: __import__('edgetts').load({missing!r})); c.main(['x'])"
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert quiet.returncode == 1
    assert quiet.stderr.startswith("error: ") and "does not exist" in quiet.stderr and "Traceback" not in quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "EDGETTS_DEBUG": "1"})
    assert "Traceback" in loud.stderr and "ModelNotFoundError" in loud.stderr
