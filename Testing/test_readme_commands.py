"""Every cheap command that README.md shows works as written.

The README's fenced ``bash``/``sh``/``console`` blocks are parsed; each command line that starts with one of
:data:`CHEAP_PREFIXES` is run in a folder where ``demo-output`` holds the output of ``medanalysis demo --quick``
(what a new user has after the README's first command, ``make demo``), and must exit with status 0. Expensive
commands (``make demo``, ``medanalysis train``, ...) are left to the demo test and to the areas' own tests.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
from helpers_demo import PROJECT_ROOT, command_environment, quick_demo

README = PROJECT_ROOT / "README.md"

#: Command lines that run in seconds, given the quick demo's output.
CHEAP_PREFIXES = (
    "medanalysis --help",
    "medanalysis --version",
    "medanalysis info",
    "medanalysis dicom ls",
    "medanalysis dicom info",
)
_HELP = re.compile(r"^medanalysis [a-z]+( [a-z]+)? (--help|-h)$")
_FENCE = re.compile(r"^```(\w+)?[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_commands(text: str) -> list[str]:
    """The command lines of the shell blocks of a markdown text, continuation lines joined, prompts and comments
    removed, a leading ``.venv/bin/`` dropped."""
    commands = []
    for match in _FENCE.finditer(text):
        if (match.group(1) or "").lower() not in ("bash", "sh", "shell", "console"):
            continue
        joined = match.group(2).replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:].strip()
            if not line or line.startswith("#"):
                continue
            line = re.sub(r"\s+#.*$", "", line)
            line = re.sub(r"^(\./)?\.venv/bin/", "", line)
            commands.append(" ".join(line.split()))
    return commands


def is_cheap(command: str) -> bool:
    return command.startswith(CHEAP_PREFIXES) or bool(_HELP.match(command))


def cheap_commands() -> list[str]:
    if not README.is_file():
        return []
    return [c for c in readme_commands(README.read_text(encoding="utf-8")) if is_cheap(c)]


def test_parser_finds_cheap_commands_in_shell_blocks_only() -> None:
    text = (
        "Intro `medanalysis info x`\n\n```bash\n$ medanalysis --help\nmedanalysis info demo-output/b  # card\n"
        "medanalysis train data \\\n  --task segmentation --model unet3d --out b\n# a comment\n```\n\n"
        "```python\nmedanalysis --help\n```\n\n```sh\n.venv/bin/medanalysis dicom ls scans/\nmake demo\n```\n"
    )
    commands = readme_commands(text)
    assert commands == [
        "medanalysis --help",
        "medanalysis info demo-output/b",
        "medanalysis train data --task segmentation --model unet3d --out b",
        "medanalysis dicom ls scans/",
        "make demo",
    ]
    assert [c for c in commands if is_cheap(c)] == ["medanalysis --help", "medanalysis info demo-output/b",
                                                    "medanalysis dicom ls scans/"]
    assert is_cheap("medanalysis train --help") and not is_cheap("medanalysis train data --out x")


def test_readme_exists_and_shows_cheap_commands() -> None:
    assert README.is_file(), f"expected {README} to exist"
    commands = cheap_commands()
    assert any(c.startswith("medanalysis --help") for c in commands), (
        f"expected README.md to show `medanalysis --help` in a bash block, found cheap commands {commands}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", cheap_commands() or ["medanalysis --help"])
def test_readme_command_runs(command: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    run = quick_demo(tmp_path_factory.getbasetemp() / "quick-demo")
    assert run.returncode == 0, f"the quick demo failed:\n{run.stderr[-4000:]}"
    arguments = shlex.split(command)
    completed = subprocess.run(
        [sys.executable, "-m", "MedAnalysisLib", *arguments[1:]],
        cwd=run.workdir,
        env=command_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, (
        f"README command `{command}` (run where demo-output holds the quick demo) exited with "
        f"{completed.returncode}:\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
    )
    assert completed.stdout.strip(), f"README command `{command}` printed nothing"
