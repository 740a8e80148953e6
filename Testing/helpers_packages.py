"""Tiny Python packages for installer tests: wheels written by hand and the real pip installing them offline."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path


def write_wheel(folder: Path, version: str) -> Path:
    """A pure-Python wheel of the distribution ``medanalysis-probe`` (import name ``medanalysis_probe``)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"medanalysis_probe-{version}.dist-info"
    files = {
        "medanalysis_probe/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: medanalysis-probe\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/top_level.txt": "medanalysis_probe\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    path = folder / f"medanalysis_probe-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def pip_into(wheelhouse: Path, target: Path, calls: list | None = None):
    """A pip runner for ``PackageInstaller``: this Python's real pip, offline (``--no-index``), installing from
    ``wheelhouse`` into ``target``; each call's requirements and constraint lines are appended to ``calls``."""

    def pip(requirements, constraints: Path) -> None:
        if calls is not None:
            calls.append({"requirements": list(requirements), "constraints": constraints.read_text().splitlines()})
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--no-index", "--find-links", str(wheelhouse), "--target", str(target), "--upgrade",
                        "-c", str(constraints), *requirements], check=True, capture_output=True, text=True)

    return pip


def requirement_files(folder: Path, lines: list[str]) -> tuple[Path, Path]:
    """A requirements file with ``lines`` and a constraints file like the shipped one."""
    requirements, constraints = folder / "requirements.txt", folder / "constraints.txt"
    requirements.write_text("# what the module needs\n" + "\n".join(lines) + "\n")
    constraints.write_text("# shipped constraints\nkeras>=3.12\n")
    return requirements, constraints
