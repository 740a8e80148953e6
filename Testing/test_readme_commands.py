"""Every shell command that README.md and docs/*.md show runs as written, or is listed here with the reason it is
not run; every relative link in them resolves.

The documents' fenced ``bash``/``sh``/``shell``/``console`` blocks are parsed into command lines (continuation lines
joined, prompts and comments removed, a leading ``.venv/bin/`` before ``medanalysis`` dropped). Each command is
either

* run (:func:`is_run`): the cheap commands on the demo's output (help, version, model cards, DICOM listings,
  conversion, planning: no TensorFlow, about a second each) and the README's follow-up commands after ``make demo``
  (:data:`RUN_ALTHOUGH_SLOW`: they import TensorFlow, about 8 s each, and are what a new user types first). Each runs
  in a fresh folder where ``demo-output`` links to the output of ``medanalysis demo --quick`` (what a new user has
  after the README's first command, ``make demo``; the run is shared with ``test_demo.py``), and must exit with
  status 0 and print something (or, with ``--out``, write it); or
* a key of :data:`NOT_RUN`, whose value says why it is not run (it trains, needs the reader's own data, 3D Slicer, a
  GPU, a cluster, the public data beside the checkout, or minutes).

A command that is neither fails the test, and so does an entry of :data:`NOT_RUN` that no document shows any more.
Links and images with a relative target must name an existing file and, with ``#anchor``, one of its headings
(GitHub's anchor rules); every fenced block names its language, so that no command hides in an unlabelled block; the
documentation index links every document; the Python examples import names the library has (read from its sources);
and README.md stays a front page of at most 200 lines whose two commands are the Makefile's.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_demo import PROJECT_ROOT, command_environment, quick_demo

README = PROJECT_ROOT / "README.md"
DOCS = PROJECT_ROOT / "docs"
DOCS_INDEX = DOCS / "README.md"
#: The documents whose commands and links are checked: the front page and the manual.
DOCUMENTS = (README, *sorted(DOCS.glob("*.md")))
README_MAX_LINES = 200

SHELL_LANGUAGES = ("bash", "sh", "shell", "console")

#: Command lines that run in about a second each (no TensorFlow), given the quick demo's output.
CHEAP_PREFIXES = (
    "medanalysis --help",
    "medanalysis --version",
    "medanalysis info demo-output/",
    "medanalysis dicom ls demo-output/",
    "medanalysis dicom info demo-output/",
    "medanalysis convert demo-output/",
    "medanalysis plan demo-output/",
)
_HELP = re.compile(r"^medanalysis [a-z]+( [a-z]+)? (--help|-h)$")

_README_FOLLOW_UP = "the README's follow-up command after `make demo`, what a new user types first"
#: Commands that import TensorFlow (about 8 s each on 2 cores) and are run all the same, with the reason.
_CATALOG_TOUR = ("the README's catalog commands on the shipped catalog: no TensorFlow, the pull copies a 1.3 MB model "
                 "into this test's own cache")
RUN_ALTHOUGH_SLOW: dict[str, str] = {
    "medanalysis models list": _CATALOG_TOUR,
    "medanalysis models pull hippocampus-unet-small": _CATALOG_TOUR,
    "medanalysis predict demo-output/bundles/segmentation demo-output/data/dicom/phantom_000 --out my-prediction "
    "--format seg.nrrd": _README_FOLLOW_UP,
    "medanalysis evaluate demo-output/bundles/classification demo-output/data/test/classification.csv "
    "--out my-evaluation": _README_FOLLOW_UP,
}

# Why a documented command is not run by this test.
_MAKE = "builds .venv and runs the full demo (about 6 min) or the whole suite; .ci/run runs `make test` and the demo"
_ENVIRONMENT = "changes the reader's shell or Python environment; the test runs the project's own environment"
_OWN_DATA = "a placeholder for the reader's own scans or bundles (path/to/..., scans/, my-model/, ...)"
_TRAINS = "trains a model (minutes to hours)"
_TENSORFLOW = ("imports TensorFlow and runs a bundle (about 8 s); the README's predict and evaluate follow-ups, which "
               "are run, cover the same path")
_DEMO = "the demo: the full one takes about 6 min; this test's own set-up runs `medanalysis demo --quick`"
_SHARED = "needs the public data beside the checkout (../shared/data), which a fresh clone does not have"
_BENCH = "a benchmark: minutes to hours on the public data, some in a second environment with PyTorch and MONAI"
_BENCH_ENV = "installs PyTorch and MONAI for the benchmarks' peers (a download of several GB)"
_SLICER_BUILD = "needs a 3D Slicer build tree"
_CLUSTER = "needs a Slurm cluster"
_GPU = "needs JAX and a GPU (the JAX measurements ran on an NVIDIA H100)"
_TESTS = "runs the test suite or part of it, which this test belongs to"
_REGISTRY = "needs a hospital's own catalog server"
_SHELL = ("names the cached model with the shell's command substitution $(...), which this test's runner (no shell) "
          "does not do; the commands inside it are run")
_READS_PREVIOUS = "reads what the command before it in the same block wrote, from the reader's own data"

#: Every documented command that is not run, with the reason. Keys are the commands as the parser gives them.
NOT_RUN: dict[str, str] = {}


def _not_run(reason: str, *commands: str) -> None:
    for command in commands:
        assert command not in NOT_RUN, f"{command!r} is listed twice"
        NOT_RUN[command] = reason


_not_run(_MAKE, "make demo", "make test", 'make test PYTEST_ARGS="--durations=15"')
_not_run(_ENVIRONMENT, "source .venv/bin/activate", "python -m pip install .", 'python -m pip install ".[dicom]"')
_not_run(_DEMO, "medanalysis demo --out demo-output", "medanalysis demo --quick --out demo-quick")
_not_run(_TENSORFLOW,
         "medanalysis configure demo-output/bundles/segmentation --out phantom-final.zip --postprocess "
         "largest-component",
         "medanalysis evaluate demo-output/bundles/segmentation demo-output/data/test --out eval-segmentation",
         "medanalysis evaluate demo-output/bundles/segmentation demo-output/data/test/dataset.json "
         "--out eval-segmentation",
         "medanalysis evaluate demo-output/bundles/classification demo-output/data/test/classification.csv "
         "--out eval-classifier",
         "medanalysis predict demo-output/bundles/segmentation demo-output/data/dicom/phantom_000 --out out/ "
         "--format nifti --format seg.nrrd --format dicom-seg --probabilities")
_not_run(_TENSORFLOW,
         "medanalysis predict demo-output/bundles/segmentation demo-output/data/test --out uncertainty --uncertainty "
         "--tta on",
         "medanalysis predict demo-output/bundles/classification demo-output/data/test/classification.csv "
         "--out explained --explain --uncertainty --tta on")
_not_run(_SHARED,
         ".venv/bin/python bench/reference_models.py --data-root ../shared/data --only split",
         "medanalysis evaluate demo-output/bundles/segmentation ../shared/data/hippocampus --out eval-hippocampus",
         "medanalysis evaluate demo-output/bundles/segmentation ../shared/data/hippocampus --out eval-hippocampus "
         "--label-map organ=anterior,vessel=posterior,lesion=none --max-cases 4")
_not_run(_OWN_DATA,
         "medanalysis dicom ls path/to/study",
         "medanalysis convert path/to/study scan.nrrd --series 1.3.6.1.4.1.9328.50.4.2",
         "medanalysis convert tilted_ct/ scan.nrrd --resample-tilt",
         "medanalysis plan path/to/Task04_Hippocampus --out plan.json",
         "medanalysis plan path/to/Task04_Hippocampus/dataset.json --out plan.json",
         "medanalysis plan scans.csv --set patch_size=64,64,64 --set normalization.scheme=zscore --out plan.json",
         "medanalysis predict hippocampus.zip scans/ --out results/ --format nifti --format seg.nrrd",
         "medanalysis predict liver-model/ scans/ --out results/ --format nifti --format seg.nrrd",
         "medanalysis predict liver-model/ study_folder/ --out results/ --format dicom-seg --probabilities "
         "--postprocess largest-component --postprocess fill-holes",
         "medanalysis predict liver-model/ scans/ --out results/ --shard ${SLURM_ARRAY_TASK_ID}/8",
         "medanalysis predict hippocampus-ensemble.zip scans/ --out predictions/",
         "medanalysis predict my-model/ scans/ --out out/ --probabilities",
         "medanalysis predict my-model/ study/ --out out/ --format dicom-seg",
         "medanalysis predict my-model/ ct_without_frame_of_reference/ --out out/ --format dicom-seg "
         "--format seg.nrrd",
         "medanalysis predict my-model/ study/ --out out/ --format dicom-seg -v 2>&1 | grep thirdparty",
         "medanalysis evaluate hippocampus.zip path/to/test_set --out report/",
         "medanalysis evaluate liver-model/ Task03_Liver/ --out report/",
         "medanalysis evaluate phantom-model/ Task04_Hippocampus/ --out report/ --label-map organ=anterior "
         "--label-map vessel=posterior --label-map lesion=none",
         "medanalysis evaluate contrast-model/ slices.csv --out report/ --group-column patient_id",
         "medanalysis evaluate ct-model/ ct_slices.csv --out eval-ct --group-column patient_id",
         "medanalysis evaluate BUNDLE DATA --out report/",
         "medanalysis configure hippocampus/ --out hippocampus-final.zip --postprocess largest-component --tta on",
         "medanalysis ensemble fold0/ fold1/ fold2/ --out hippocampus-ensemble.zip --postprocess largest-component",
         "medanalysis info hippo")
_not_run(_OWN_DATA,
         "medanalysis preprocess path/to/Task04_Hippocampus --plan plan.json --out hippocampus.cache --workers 8")
_not_run(_OWN_DATA,
         "medanalysis models list --catalog my-registry/catalog.json",
         "medanalysis models pull organ-ct --catalog my-registry/catalog.json",
         "medanalysis models list --catalog my-registry/catalog.json --modality ct --offline",
         "medanalysis models path organ-ct --catalog my-registry/catalog.json",
         'medanalysis predict "$(medanalysis models path hippocampus-unet-small)" scans/ --out results/ '
         '--uncertainty --tta on')
_not_run(_REGISTRY, "MEDANALYSIS_CATALOGS=https://models.example-hospital.org/catalog.json medanalysis models list")
_not_run(_OWN_DATA,
         "medanalysis configure hippocampus.zip --out hippocampus-1.1.zip --evaluation report/summary.json "
         "--model-version 1.1.0")
_not_run(_TRAINS,
         'medanalysis train path/to/Task04_Hippocampus --task segmentation --model unet3d --out hippocampus/ '
         '--card card.json --author "A. Author" --license CC-BY-4.0')
_not_run(_TRAINS,
         "medanalysis train hippocampus.cache --task segmentation --model unet3d --out hippocampus.zip",
         "KERAS_BACKEND=jax medanalysis train hippocampus.cache --task segmentation --model unet3d "
         "--out hippocampus-jax.zip",
         "medanalysis train path/to/Task04_Hippocampus --task segmentation --model unet3d --out hippocampus.zip "
         "--epochs 50",
         "medanalysis train scans.csv --task classification --model slice_cnn --hparam preset=residual "
         "--out contrast-model",
         "medanalysis train Task04_Hippocampus/dataset.json --task segmentation --model unet3d --out hippo "
         "--labels labels.json")
_not_run(_READS_PREVIOUS,
         "python -c \"import SimpleITK as s; i = s.ReadImage('out/case01_probability_1_liver.nii.gz'); "
         "print(i.GetSize(), i.GetNumberOfComponentsPerPixel())\"",
         "python -c \"import highdicom as hd; s = hd.seg.segread('out/study_seg.dcm'); "
         "d = s.get_segment_description(1); print(d.segment_label, d.segmented_property_type, "
         "hd.color.CIELabColor.from_dicom_value(s.SegmentSequence[0].RecommendedDisplayCIELabValue).to_rgb())\"",
         "cat out/batch_summary.json")
_not_run(_SHELL,
         'medanalysis info "$(medanalysis models path hippocampus-unet-small)"',
         'medanalysis predict "$(medanalysis models path hippocampus-unet-small)" '
         '../shared/data/hippocampus/imagesTr/hippocampus_001.nii.gz --out hippocampus-001 --uncertainty --tta on',
         'medanalysis predict "$(medanalysis models path hippocampus-unet-small)" '
         'bench/output/reference_models/hippocampus/test --out unc40 --uncertainty --tta on',
         'medanalysis evaluate "$(medanalysis models path hippocampus-unet-small)" '
         'bench/output/reference_models/hippocampus/test --out eval40 --tta on --no-figures',
         'medanalysis predict "$(medanalysis models path ct-contrast-slice-cnn)" '
         '../shared/data/ct_contrast/dicom/ID_0000_AGE_0060_CONTRAST_1_CT.dcm --out ct --explain --uncertainty --tta on')
_not_run(_READS_PREVIOUS,
         ".venv/bin/python bench/docs_figures.py review unc40 eval40 --out review.png")
_not_run(_SLICER_BUILD,
         "cmake -S . -B build -DSlicer_DIR=/path/to/Slicer-SuperBuild/Slicer-build",
         "cmake --build build && (cd build && ctest -R MedAnalysis && cpack)")
_not_run(_CLUSTER,
         "sbatch --array=1-16 --cpus-per-task=8 --wrap 'medanalysis predict model.zip /data/studies --out "
         "/data/results --shard ${SLURM_ARRAY_TASK_ID}/16 --progress log'")
_not_run(_TESTS,
         ".venv/bin/python -m pytest --collect-only -q | tail -n 1",
         ".venv/bin/python -m pytest -q Testing/test_io_dicom.py",
         '.venv/bin/python -m pytest -q -m "not slow"',
         ".venv/bin/python -m pytest -q -m nightly -s Testing/fuzz",
         "make lint")
_not_run(_BENCH_ENV,
         "python3 -m venv bench/.venv-monai",
         "bench/.venv-monai/bin/pip install torch==2.13.0 monai scipy SimpleITK numpy",
         "bench/.venv-monai/bin/pip install --no-deps -e .")
_not_run(_BENCH,
         "nice bench/accuracy_hippocampus",
         ".venv/bin/python bench/bench_explain.py --data ../shared/data/ct_contrast --epochs 15",
         "nice -n 10 .venv/bin/python bench/reference_models.py --data-root ../shared/data --install",
         "nice bench/accuracy_ct_contrast",
         "nice bench/accuracy_ct_contrast --only preset --out bench/output/ct_contrast-split0-last",
         "nice bench/accuracy_ct_contrast --seed 1 --only preset --out bench/output/ct_contrast-split1-last",
         'earlier="--val-fraction 0.2 --monitor val_loss"',
         "nice bench/accuracy_ct_contrast --seed 1 --seeds 1 --only preset $earlier "
         "--out bench/output/ct_contrast-split1-body",
         "nice bench/accuracy_ct_contrast --seed 1 --seeds 1 --only preset $earlier --set body_threshold=null "
         "--set slice_keep_aspect=false --out bench/output/ct_contrast-split1-fov",
         "nice bench/accuracy_sequence",
         ".venv/bin/python bench/bench_backends.py export bench/output/backends",
         ".venv/bin/python bench/bench_cache.py --cases 13 --shape 128,160,160 --sizes 1,4,16 --steps 20 "
         "--patch 64,64,64 --batch 2 --base-filters 8 --compare --loader --direct --work bench/output/cache --keep",
         ".venv/bin/python bench/bench_cache.py --dataset ../shared/data/hippocampus --batch 4 --steps 25 "
         "--base-filters 16 --hparam max_filters=128 --hparam deep_supervision=true --repeats 2")
_not_run(_GPU,
         "KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false python bench/bench_backends.py check "
         "bench/output/backends --steps 40 --json backends.json")


# ------------------------------------------------------------------------------------------------ markdown parsing
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)")


def split_fences(text: str) -> tuple[str, list[tuple[str, str]]]:
    """``(prose, blocks)``: the text with every fenced block blanked out (line numbers kept), and the blocks as
    ``(language, body)`` with the language lower-cased (``""`` when the fence names none)."""
    prose: list[str] = []
    blocks: list[tuple[str, str]] = []
    fence: str | None = None
    language, body = "", []
    for line in text.splitlines():
        if fence is None:
            match = _FENCE.match(line)
            if match:
                fence, language, body = match.group(1), match.group(2).lower(), []
                prose.append("")
            else:
                prose.append(line)
            continue
        stripped = line.strip()
        if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
            blocks.append((language, "\n".join(body) + "\n"))
            fence = None
        else:
            body.append(line)
        prose.append("")
    if fence is not None:
        blocks.append((language, "\n".join(body) + "\n"))
    return "\n".join(prose), blocks


def shell_commands(text: str) -> list[str]:
    """The command lines of the shell blocks of a markdown text: continuation lines joined, prompts and comments
    removed, whitespace normalised, a leading ``.venv/bin/`` before ``medanalysis`` dropped."""
    commands = []
    for language, body in split_fences(text)[1]:
        if language not in SHELL_LANGUAGES:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:].strip()
            if not line or line.startswith("#"):
                continue
            line = re.sub(r"\s+#.*$", "", line)
            line = re.sub(r"^(\./)?\.venv/bin/medanalysis\b", "medanalysis", line)
            commands.append(" ".join(line.split()))
    return commands


def is_cheap(command: str) -> bool:
    return command.startswith(CHEAP_PREFIXES) or bool(_HELP.match(command))


def is_run(command: str) -> bool:
    return is_cheap(command) or command in RUN_ALTHOUGH_SLOW


def documented_commands() -> dict[str, list[str]]:
    """Command -> the documents (relative to the project) that show it, in document order."""
    found: dict[str, list[str]] = {}
    for document in DOCUMENTS:
        if not document.is_file():
            continue
        name = document.relative_to(PROJECT_ROOT).as_posix()
        for command in shell_commands(document.read_text(encoding="utf-8")):
            if name not in found.setdefault(command, []):
                found[command].append(name)
    return found


def commands_to_run() -> list[str]:
    return [command for command in documented_commands() if is_run(command)]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation other than ``-`` and ``_`` dropped, spaces to ``-``
    (link targets ``[text](url)`` count by their text)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a markdown text, duplicates numbered ``-1``, ``-2``, ... as GitHub numbers them."""
    seen: dict[str, int] = {}
    result = set()
    for line in split_fences(text)[0].splitlines():
        match = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        anchor = github_anchor(match.group(1))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        result.add(anchor if count == 0 else f"{anchor}-{count}")
    return result


_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.MULTILINE)


def relative_links(text: str) -> list[str]:
    """Targets of the inline and reference links and images outside code, except URLs with a scheme."""
    prose = re.sub(r"`[^`\n]*`", "", split_fences(text)[0])
    targets = _LINK.findall(prose) + _REFERENCE.findall(prose)
    return [t for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t)]


def broken_links(document: Path) -> list[str]:
    problems = []
    for target in relative_links(document.read_text(encoding="utf-8")):
        path_part, _, anchor = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        if not path.exists():
            problems.append(f"{target}: no file {path}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path.read_text(encoding="utf-8")):
            problems.append(f"{target}: no heading with anchor #{anchor} in {path.name}")
    return problems


_FROM_IMPORT = re.compile(r"^from (MedAnalysisLib[\w.]*) import ([\w, ]+)$", re.MULTILINE)


def library_imports(text: str) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every ``from MedAnalysisLib... import a, b`` line in the Python blocks of a text."""
    found = []
    for language, body in split_fences(text)[1]:
        if language == "python":
            found += [(m.group(1), [n.strip() for n in m.group(2).split(",") if n.strip()])
                      for m in _FROM_IMPORT.finditer(body)]
    return found


def top_level_names(module: str) -> set[str] | None:
    """Names a module's source defines or imports at top level, read without running it (None: no such module)."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:  # a parent is missing or is not a package
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    if spec.submodule_search_locations:  # a package: its sub-modules can be imported from it too
        for location in spec.submodule_search_locations:
            names.update(p.stem for p in Path(location).iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file())
    return names


# ------------------------------------------------------------------------------------------------ the parser itself
def test_parser_finds_commands_in_shell_blocks_only() -> None:
    text = (
        "Intro `medanalysis info x`\n\n```bash\n$ medanalysis --help\nmedanalysis info demo-output/b  # card\n"
        "medanalysis train data \\\n  --task segmentation --model unet3d --out b\n# a comment\n```\n\n"
        "```python\nmedanalysis --help\n```\n\n```sh\n.venv/bin/medanalysis dicom ls scans/\nmake demo\n"
        ".venv/bin/python -m pytest -q\n```\n\n~~~console\n$ medanalysis --version\n~~~\n"
    )
    commands = shell_commands(text)
    assert commands == [
        "medanalysis --help",
        "medanalysis info demo-output/b",
        "medanalysis train data --task segmentation --model unet3d --out b",
        "medanalysis dicom ls scans/",
        "make demo",
        ".venv/bin/python -m pytest -q",
        "medanalysis --version",
    ]
    assert [c for c in commands if is_cheap(c)] == ["medanalysis --help", "medanalysis info demo-output/b",
                                                    "medanalysis --version"]
    assert is_cheap("medanalysis train --help") and not is_cheap("medanalysis train data --out x")
    assert not is_cheap("medanalysis info hippo"), "a bundle outside the demo's output is not there to read"


def test_links_and_anchors_follow_github() -> None:
    assert github_anchor("Inputs: one answer for every command") == "inputs-one-answer-for-every-command"
    assert github_anchor("Evaluation: what `medanalysis evaluate` measures, and how") == (
        "evaluation-what-medanalysis-evaluate-measures-and-how")
    assert github_anchor("Facts measured (2 cores, AVX-512, no GPU)") == "facts-measured-2-cores-avx-512-no-gpu"
    text = "# A\n\n```bash\n# not a heading\n```\n\n## A\n\n[x](other.md#b) ![y](pic.png) `[z](code.md)` [w](https://e.org)\n"
    assert anchors(text) == {"a", "a-1"}
    assert relative_links(text) == ["other.md#b", "pic.png"]


def test_import_check_reads_the_sources() -> None:
    text = "```python\nfrom MedAnalysisLib.io import load_volume, write_volume\nimport os\n```\n"
    assert library_imports(text) == [("MedAnalysisLib.io", ["load_volume", "write_volume"])]
    names = top_level_names("MedAnalysisLib.io")
    assert names is not None and {"load_volume", "write_volume"} <= names and "no_such_function" not in names
    assert top_level_names("MedAnalysisLib.no_such_module") is None
    assert top_level_names("MedAnalysisLib.volume.no_such_module") is None


# ------------------------------------------------------------------------------------------------ the documents
def test_readme_is_a_front_page_with_the_makefiles_two_commands() -> None:
    assert README.is_file(), f"expected {README} to exist"
    text = README.read_text(encoding="utf-8")
    lines = len(text.splitlines())
    assert lines <= README_MAX_LINES, (
        f"expected README.md to stay a front page of at most {README_MAX_LINES} lines (the manual is docs/), got {lines}")
    assert "not for clinical use" in text.lower(), "expected README.md to say that MedAnalysis is not for clinical use"
    commands = shell_commands(text)
    for command in ("make demo", "make test", "medanalysis --help"):
        assert command in commands, f"expected README.md to show `{command}` in a shell block, found {commands}"
    makefile = (PROJECT_ROOT / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"expected the Makefile to define `{target}`"
    assert re.search(r"^make test$", (PROJECT_ROOT / ".ci" / "run").read_text(encoding="utf-8"), re.MULTILINE), (
        "expected .ci/run to run `make test`, the test command README.md gives")


def test_every_documented_command_is_run_or_listed_with_a_reason() -> None:
    found = documented_commands()
    assert found, "expected shell commands in README.md and docs/"
    unclassified = [f"{command!r} (in {', '.join(where)})" for command, where in found.items()
                    if not is_run(command) and command not in NOT_RUN]
    assert not unclassified, (
        "expected every shell command of the docs to run in this test or to be listed in NOT_RUN with the reason "
        "it is not run; these are neither:\n" + "\n".join(unclassified))
    both = [command for command in NOT_RUN if is_run(command)]
    assert not both, f"expected commands this test runs to be absent from NOT_RUN, got {both}"
    stale = [command for command in NOT_RUN if command not in found]
    assert not stale, f"expected every NOT_RUN entry to be a command the docs show, these are not: {stale}"
    missing = [command for command in RUN_ALTHOUGH_SLOW if command not in found]
    assert not missing, f"expected every RUN_ALTHOUGH_SLOW entry to be a command the docs show, got {missing}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(PROJECT_ROOT).as_posix())
def test_fenced_blocks_name_their_language(document: Path) -> None:
    blocks = split_fences(document.read_text(encoding="utf-8"))[1]
    unnamed = [body.splitlines()[0] if body.strip() else "(empty)" for language, body in blocks if not language]
    assert not unnamed, f"expected every fenced block of {document.name} to name its language, got blocks starting {unnamed}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(PROJECT_ROOT).as_posix())
def test_relative_links_resolve(document: Path) -> None:
    problems = broken_links(document)
    assert not problems, f"expected every relative link of {document.relative_to(PROJECT_ROOT)} to resolve:\n" + (
        "\n".join(problems))


def test_docs_index_links_every_document() -> None:
    assert DOCS_INDEX.is_file(), f"expected the documentation index {DOCS_INDEX}"
    linked = {(DOCS / target.partition("#")[0]).resolve() for target in relative_links(DOCS_INDEX.read_text("utf-8"))}
    unlisted = [p.name for p in sorted(DOCS.glob("*.md")) if p != DOCS_INDEX and p.resolve() not in linked]
    assert not unlisted, f"expected docs/README.md to link every document of docs/, missing {unlisted}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(PROJECT_ROOT).as_posix())
def test_python_examples_import_names_the_library_has(document: Path) -> None:
    """The Python examples import what exists (read from the sources, nothing imported): a renamed module or
    function shows up here, not in a reader's traceback."""
    problems = []
    for module, names in library_imports(document.read_text(encoding="utf-8")):
        defined = top_level_names(module)
        if defined is None:
            problems.append(f"from {module} import ...: no module {module}")
        else:
            problems += [f"from {module} import {name}: {module} has no {name}" for name in names if name not in defined]
    assert not problems, f"expected the Python examples of {document.name} to import existing names:\n" + (
        "\n".join(problems))


@pytest.mark.slow
@pytest.mark.parametrize("command", commands_to_run() or ["medanalysis --help"], ids=str)
def test_documented_command_runs(command: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    run = quick_demo(tmp_path_factory.getbasetemp() / "quick-demo")
    assert run.returncode == 0, f"the quick demo failed:\n{run.stderr[-4000:]}"
    (tmp_path / "demo-output").symlink_to(run.out, target_is_directory=True)
    arguments = shlex.split(command)
    env = command_environment()  # models pulled by a documented command go to a cache of this test run's own
    env["MEDANALYSIS_MODEL_CACHE"] = str(tmp_path_factory.getbasetemp() / "model-cache")
    env.pop("MEDANALYSIS_CATALOGS", None)  # the shipped catalog only, as on a fresh installation
    completed = subprocess.run(
        [sys.executable, "-m", "MedAnalysisLib", *arguments[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    where = ", ".join(documented_commands().get(command, ["the docs"]))
    assert completed.returncode == 0, (
        f"`{command}` ({where}; run where demo-output holds the quick demo) exited with "
        f"{completed.returncode}:\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}"
    )
    if "--out" in arguments:  # a command that writes files says little on stdout: what it wrote must be there
        written = tmp_path / arguments[arguments.index("--out") + 1]
        assert written.exists() and (written.is_file() or any(written.iterdir())), (
            f"`{command}` ({where}) exited with 0 but wrote nothing at {written}:\n{completed.stderr[-2000:]}")
    else:
        assert completed.stdout.strip(), f"`{command}` ({where}) printed nothing"
