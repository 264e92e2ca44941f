"""The package as a library: a wheel built from pyproject.toml installs and imports without the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
#: What the wheel is built from: the package and the files pyproject.toml names.
SOURCES = ("pyproject.toml", "README.md", "agent")

CHECK = """
import importlib, json, sys
import agent, agent.scheduler as scheduler
from agent.scheduler import service_files
missing = [name for name in scheduler.__all__ if getattr(scheduler, name, None) is None]
for module in ("registry", "cli", "adapters.service_registry", "adapters.telegram", "service_files"):
    importlib.import_module("agent.scheduler." + module)
print(json.dumps({
    "agent": agent.__file__,
    "scheduler": scheduler.__file__,
    "missing": missing,
    "names": len(scheduler.__all__),
    "unit": "ExecStart=" in service_files.template_text("linux"),
    "plist": "ProgramArguments" in service_files.template_text("macos"),
    "checkout_on_path": any(p and p.rstrip("/") == sys.argv[1] for p in sys.path),
}))
"""


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def test_the_wheel_installs_into_a_fresh_venv_and_imports_without_the_checkout(tmp_path: Path) -> None:
    source, dist, venv, elsewhere = (tmp_path / name for name in ("source", "dist", "venv", "elsewhere"))
    source.mkdir()
    elsewhere.mkdir()
    for name in SOURCES:  # a copy, so that the build leaves nothing in the checkout
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(source)], tmp_path)
    (wheel,) = dist.glob("actp_scheduler-*.whl")

    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)], tmp_path)
    # The dependencies, from this environment's site-packages, placed after the fresh venv's own.
    fresh_site = Path(
        run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip()
    )
    (fresh_site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ACTP_"))}
    help_text = run([str(python), "-m", "agent.scheduler", "--help"], elsewhere, env).stdout
    assert "install-service" in help_text

    import json

    found = json.loads(run([str(python), "-c", CHECK, str(ROOT)], elsewhere, env).stdout)
    assert found["missing"] == [] and found["names"] >= 18
    assert Path(found["scheduler"]).is_relative_to(venv) and Path(found["agent"]).is_relative_to(venv)
    assert found["unit"] and found["plist"]  # the service templates are in the wheel
    assert found["checkout_on_path"] is False
