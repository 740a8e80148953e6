"""pytest fixtures of the layer; a test module imports the ones it uses::

    from slicer_gui.fixtures import load_module_file, slicer_gui  # noqa: F401 - pytest fixtures

``slicer_gui``: the installed layer (:class:`slicer_gui.Installed`) on a fresh scene from
``slicer_scene.make_scene()``, with a QApplication. At teardown the module widgets it made are cleaned up (as
Slicer does when a module is unloaded), the scene is closed while the layer is still installed, the layer is
removed, and the test fails if a slot or observer raised, a dialog nobody expected opened, or an expected one did
not. ``load_module_file``: ``load(path=MedAnalysis/MedAnalysis.py)`` imports the module file fresh under the layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from slicer_scene import make_scene

from . import MODULE_FILE, Installed, install, uninstall


@pytest.fixture
def slicer_gui() -> Iterator[Installed]:
    """The layer installed on a fresh real scene (see the module docstring)."""
    bundle = make_scene()
    installed = install(bundle)
    try:
        yield installed
    finally:
        try:
            for widget in reversed(installed.widgets):
                widget.cleanup()
            bundle.close()
        finally:
            problems = uninstall()
    if problems:
        pytest.fail("the Slicer GUI layer saw problems:\n" + "\n".join(problems))


@pytest.fixture
def load_module_file(slicer_gui: Installed) -> Callable[..., ModuleType]:
    """``load(path=MODULE_FILE)``: the scripted module file imported fresh under the layer."""

    def load(path: Path = MODULE_FILE) -> ModuleType:
        return slicer_gui.load_module_file(path)

    return load
