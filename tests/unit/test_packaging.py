"""The package as the bridge image installs it: built into a wheel, installed into a clean venv.

docker/Dockerfile.bridge copies the sources and runs `pip install .`; the services
and icsctl then run from site-packages, far from the checkout. Everything the code
reads at import (the prompt manifest, ics.prompts) must be in the wheel. No network:
the wheel is built with --no-build-isolation from the project's .venv (setuptools
there) and installed with --no-deps --no-index; the third-party dependencies come
from the project's .venv site-packages on PYTHONPATH (a plain directory: its .pth
files, among them the editable install's path hook to this checkout, are not read).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile.bridge"


def dockerfile_sources() -> list[str]:
    """What the bridge image copies into its build directory (COPY src... dest)."""
    srcs = []
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"\s*COPY\s+(?!--)(.+)\s+\S+\s*$", line)
        if m:
            srcs += m.group(1).split()
    return srcs


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A venv with only the built wheel installed; returns (its bin dir, the wheel)."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    src.mkdir()
    for rel in dockerfile_sources():  # the same files, as Docker copies them (symlinks kept)
        path = REPO / rel.rstrip("/")
        if path.is_dir():
            shutil.copytree(path, src / path.name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / path.name)
    run = dict(check=True, capture_output=True, text=True, timeout=240)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(tmp / "dist"), str(src)], **run)
    wheel, = (tmp / "dist").glob("ics_bridge-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], **run)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], **run)
    return venv / "bin", wheel


def outside(bin_dir: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    deps = sysconfig.get_paths()["purelib"]  # redis, structlog, ...: the project's .venv, not the checkout
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ICS_"))}
    env["PYTHONPATH"] = deps
    return subprocess.run([str(bin_dir / argv[0]), *argv[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_wheel_carries_the_prompt_manifest(clean):
    _, wheel = clean
    repo_manifest = (REPO / "prompts" / "manifest.toml").read_bytes()
    with zipfile.ZipFile(wheel) as z:
        shipped = [n for n in z.namelist() if n.endswith("manifest.toml")]
        assert shipped == ["ics/manifest.toml"], z.namelist()
        assert z.read(shipped[0]) == repo_manifest  # one source of truth: prompts/manifest.toml


def test_installed_package_imports_and_icsctl_starts_outside_the_repo(clean, tmp_path):
    bin_dir, _ = clean
    probe = outside(bin_dir, "python", "-c",
                    "import ics, ics.prompts, ics.cli, agi.server, ami.listener;"
                    "print(ics.__file__); print(len(ics.prompts.MANIFEST))", cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    where, count = probe.stdout.split()
    assert Path(where).is_relative_to(bin_dir.parent), where  # the installed copy, not this checkout
    table = tomllib.loads((REPO / "prompts" / "manifest.toml").read_text())
    assert int(count) == len([v for v in table.values() if isinstance(v, str)])  # the English prompts
    helped = outside(bin_dir, "icsctl", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "inmate" in helped.stdout
