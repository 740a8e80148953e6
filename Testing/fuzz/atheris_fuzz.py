"""Coverage-guided fuzzing of the readers and the bundle loader with atheris (libFuzzer for Python).

atheris is not a dependency of MedAnalysis or of its test extra; install it for a nightly job::

    pip install atheris
    python Testing/fuzz/atheris_fuzz.py TARGET [CORPUS_DIR] [libFuzzer options]

``TARGET`` is one of ``nifti``, ``nifti_gz``, ``nrrd``, ``mha``, ``nrrd_detached``, ``mha_detached`` (a detached
header beside data files and outside bait), ``dicom``, ``bundle_json``, ``bundle_zip`` (see ``harness.TARGETS``). The corpus folder (default ``fuzz-corpus/TARGET``) is seeded with a valid file on the first run.
Useful options: ``-max_total_time=3600``, ``-runs=100000``, ``-rss_limit_mb=4096``, ``-timeout=20``. A crash (an
exception outside ``harness.CLEAN_FAILURES``) stops the run and writes ``crash-<sha1>``; replay it with::

    python Testing/fuzz/atheris_fuzz.py TARGET crash-<sha1>

then fix the reader and add the input, built in code, to the hostile-input tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parents[1])]

import atheris  # noqa: E402

with atheris.instrument_imports(include=["MedAnalysisLib", "pydicom", "zipfile", "json", "harness"]):
    # Everything the targets import lazily is imported here, so that its code is instrumented for coverage.
    import harness
    import pydicom  # noqa: F401

    import MedAnalysisLib.bundles
    import MedAnalysisLib.io.dicom
    import MedAnalysisLib.io.files
    import MedAnalysisLib.preprocessing.plan
    import MedAnalysisLib.safe_archive  # noqa: F401


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in harness.TARGETS:
        raise SystemExit(f"usage: {argv[0]} TARGET [CORPUS_DIR] [libFuzzer options]; TARGET in {sorted(harness.TARGETS)}")
    name = argv[1]
    target, seed = harness.TARGETS[name]
    rest = argv[2:]
    if not rest or rest[0].startswith("-"):
        rest.insert(0, str(Path("fuzz-corpus") / name))
    first = Path(rest[0])
    if not first.is_file():  # a corpus folder (a file argument replays one input)
        first.mkdir(parents=True, exist_ok=True)
        if not any(first.iterdir()):
            (first / "seed").write_bytes(seed())

    def test_one_input(data: bytes) -> None:
        harness.run_clean(target, data)

    atheris.Setup([argv[0], *rest], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
