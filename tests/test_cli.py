from __future__ import annotations

import json
import os
import subprocess
import sys

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


def test_doctor_json_reports_machine_and_engines():
    result = edgetts("doctor", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["cpu"]["logical_cores"] >= 1 and data["memory"]["total_gb"] > 0
    names = {c["name"]: c for c in data["components"]}
    assert {"llama-cpp-python", "onnxruntime", "torch"} <= set(names)
    for component in names.values():
        assert component["ok"] or component["fix"].startswith("pip install")
    if names["onnxruntime"]["ok"]:
        assert "CPUExecutionProvider" in data["onnxruntime"]["providers"]
    if names["llama-cpp-python"]["ok"]:
        assert isinstance(data["llama_cpp"]["gpu_offload"], bool)


def test_doctor_table():
    result = edgetts("doctor")
    assert result.returncode == 0 and "component" in result.stdout


def test_user_errors_print_one_line_and_debug_shows_the_traceback(tmp_path):
    missing = str(tmp_path / "nope.gguf")
    code = f"import edgetts.cli as c; c.app.command('x')(lambda: __import__('edgetts').load({missing!r})); c.main(['x'])"
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert quiet.returncode == 1
    assert quiet.stderr.startswith("error: ") and "does not exist" in quiet.stderr and "Traceback" not in quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "EDGETTS_DEBUG": "1"})
    assert "Traceback" in loud.stderr and "ModelNotFoundError" in loud.stderr
