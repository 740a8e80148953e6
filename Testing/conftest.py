"""Shared fixtures. Real data is read from ../shared/data beside the project root; it is never copied here."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from MedAnalysisLib.volume import Volume, rotation_about_axis  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The Slicer module's plain-Python library (MedAnalysis/MedAnalysisSlicerLib), importable as Slicer imports it.
if str(PROJECT_ROOT / "MedAnalysis") not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT / "MedAnalysis"))
SHARED = Path(os.environ.get("MEDANALYSIS_SHARED", PROJECT_ROOT.parent / "shared"))
SHARED_DATA = Path(os.environ.get("MEDANALYSIS_SHARED_DATA", SHARED / "data"))
SLICER_API_MANIFEST = Path(os.environ.get("MEDANALYSIS_SLICER_API", SHARED / "slicer-api" / "manifest.json"))
#: Set by CI (.ci/run): a missing shared folder is then a failure instead of a skip.
REQUIRE_SHARED = os.environ.get("MEDANALYSIS_REQUIRE_SHARED") == "1"


def require_shared(path: Path, what: str, where: str) -> Path:
    """``path`` when it exists; otherwise skip the test with a reason that says where to get it, or fail under CI.

    Args:
        path: The file or folder the test needs.
        what: What it is, for the message.
        where: Where it comes from and which variable points to it.
    """
    if path.exists():
        return path
    message = f"{what} not found at {path}: {where}"
    if REQUIRE_SHARED:
        pytest.fail(f"{message} (MEDANALYSIS_REQUIRE_SHARED=1 makes this a failure)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public images (see shared/data/README.md beside the project): skipped where absent, failed in CI."""
    require_shared(SHARED_DATA / "README.md", "the public test images (shared/data)",
                   "the public datasets MSD Task04 Hippocampus, TCIA chest CT slices, Slicer's CT head series, "
                   "TCIA Brain-Tumor-Progression and the dicom2nifti vendor samples, laid out as in its README.md; "
                   "point MEDANALYSIS_SHARED_DATA at a copy")
    return SHARED_DATA


@pytest.fixture(scope="session")
def slicer_api_manifest() -> Path:
    """Facts read from Slicer's and CTK's sources per Slicer version (shared/slicer-api/manifest.json)."""
    return require_shared(SLICER_API_MANIFEST, "the Slicer API manifest (shared/slicer-api/manifest.json)",
                          "it is generated from the Slicer and CTK sources of each supported version; point "
                          "MEDANALYSIS_SLICER_API at a copy")


@pytest.fixture
def oblique_volume_factory() -> Callable[..., Volume]:
    """Build an oblique, anisotropic volume (20 degrees about z, then 10 about x) with a bright cube.

    Returns a function ``make(shape=(20, 30, 40), spacing=(0.8, 1.1, 2.5), cube_center_ijk=None, cube_half=3,
    dtype=np.float32)``; the volume's metadata holds ``cube_center_lps`` (the physical centre of the cube).
    """

    def make(
        shape: tuple[int, int, int] = (20, 30, 40),
        spacing: tuple[float, float, float] = (0.8, 1.1, 2.5),
        cube_center_ijk: tuple[int, int, int] | None = None,
        cube_half: int = 3,
        dtype: type = np.float32,
    ) -> Volume:
        rng = np.random.default_rng(0)
        array = rng.normal(0, 1, size=shape).astype(dtype) if np.issubdtype(dtype, np.floating) else np.zeros(shape, dtype)
        k, j, i = shape
        ci, cj, ck = cube_center_ijk or (i // 2, j // 2, k // 2)
        array[
            max(ck - cube_half, 0) : ck + cube_half + 1,
            max(cj - cube_half, 0) : cj + cube_half + 1,
            max(ci - cube_half, 0) : ci + cube_half + 1,
        ] = 100
        direction = rotation_about_axis("z", 20) @ rotation_about_axis("x", 10)
        volume = Volume(array, spacing=spacing, origin=(-12.5, 30.25, 7.0), direction=direction)
        center = volume.index_to_physical((ci, cj, ck))
        return volume.with_array(array, cube_center_lps=tuple(float(c) for c in center))

    return make


@pytest.fixture
def scene():
    """A fresh real MRML scene with Slicer's module logics wired (``Testing/slicer_scene.py``); closed afterwards."""
    from slicer_scene import make_scene

    built = make_scene()
    yield built
    built.close()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The Slicer tests' bundles: the module self-test's tiny ones (:func:`MedAnalysisSlicerLib.selftest.buildTinyBundles`)."""
    from MedAnalysisSlicerLib.selftest import buildTinyBundles

    return buildTinyBundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="module")
def slice_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained per-slice classifier (slice_cnn): per-slice rows, a whole-scan row and a per-slice plot."""
    from helpers_inference import train_classifier_bundle

    return train_classifier_bundle(tmp_path_factory.mktemp("slice") / "slice_cnn", "slice_cnn", steps=0)
