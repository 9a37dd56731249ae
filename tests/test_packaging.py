"""The package installs as designed: export/ and runtimes/ live inside edgetts, the core is light."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ["torch", "transformers", "onnxruntime", "llama_cpp", "optimum", "onnx"]

# Makes every heavy engine unimportable, as on a machine where none is installed.
BLOCK_HEAVY = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {HEAVY!r}:
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, Block())
"""


def run_python(code: str, cwd: Path, env_path: str | None = None) -> str:
    env = {"PATH": "/usr/bin:/bin"}
    if env_path:
        env["PYTHONPATH"] = env_path
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_wheel_installs_export_and_runtimes_inside_edgetts(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("edgetts-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names}
    assert not top_level & {"export", "runtimes", "profiles", "tests", "benchmarks", "apps"}, top_level
    assert "edgetts/export/atomic.py" in names and "edgetts/runtimes/torch.py" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    out = run_python(
        "import edgetts.export, edgetts.runtimes, edgetts.profiles; print(edgetts.export.__file__, edgetts.runtimes.__file__)",
        cwd=tmp_path, env_path=str(site),
    )
    assert out.count(str(site)) == 2


def test_core_imports_without_any_engine():
    code = BLOCK_HEAVY + """
import edgetts, edgetts.cli, edgetts.runtimes, edgetts.export, edgetts.testing, edgetts.doctor
print(sorted(m for m in sys.modules if m.split('.')[0] in %r))
report = edgetts.doctor.report()
print([c['name'] for c in report['components'] if not c['ok']])
""" % (HEAVY,)
    out = run_python(code, cwd=REPO).splitlines()
    assert out[0] == "[]"
    assert "torch" in out[1] and "llama-cpp-python" in out[1]


def test_loading_a_model_without_its_engine_says_how_to_install_it(tiny_model):
    code = BLOCK_HEAVY + f"""
import edgetts
try:
    edgetts.load({str(tiny_model('llama'))!r})
except edgetts.EdgettsError as exc:
    print(exc)
"""
    out = run_python(code, cwd=REPO)
    assert "pip install" in out and "torch" in out


def test_the_main_job_exports_the_built_in_model_without_torch(tmp_path):
    """`pip install edgetts` (no export extra) must still turn the built-in weights into a GGUF."""
    no_torch = BLOCK_HEAVY.replace(repr(HEAVY), repr(["torch", "transformers", "optimum", "onnx"]))
    out = tmp_path / "generator.gguf"
    code = no_torch + f"""
from edgetts import embedded
from edgetts.export import export
report = export(embedded.path("generator"), {str(out)!r}, format="gguf", quant="q8_0", progress=False)
print(report.size_bytes)
"""
    assert int(run_python(code, cwd=REPO)) == out.stat().st_size > 0
