"""Import-time placeholders for the Slicer application layer that slicer-core does not ship.

``MedAnalysis/MedAnalysis.py`` imports ``qt``, ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``
and ``slicer.i18n``, which exist only inside the Slicer application. These placeholders let the module file be
imported so its *logic* can be tested on slicer-core's real MRML scene. They are deliberately inert: no test may
assert anything about widget behaviour through them (the panel is checked by parsing the .ui file and by rendering
it with PySide6 instead). Names that slicer-core does provide (``slicer.util``, node classes, module logics) are
never replaced.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODULE_FILE = PROJECT_ROOT / "MedAnalysis" / "MedAnalysis.py"


class _Inert:
    """Accepts any construction; has no behaviour."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


def _scripted_loadable_module() -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule(_Inert):
        pass

    class ScriptedLoadableModuleWidget(_Inert):
        pass

    class ScriptedLoadableModuleLogic(_Inert):
        pass

    class ScriptedLoadableModuleTest(_Inert):
        pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        cls.__module__ = module.__name__
        setattr(module, cls.__name__, cls)
    return module


def _parameter_node_wrapper() -> types.ModuleType:
    module = types.ModuleType("slicer.parameterNodeWrapper")

    def parameterNodeWrapper(cls: type) -> type:  # noqa: N802 - Slicer's name
        return cls

    class Choice(_Inert):
        pass

    class WithinRange(_Inert):
        pass

    class Default(_Inert):
        pass

    module.parameterNodeWrapper = parameterNodeWrapper  # type: ignore[attr-defined]
    module.Choice = Choice  # type: ignore[attr-defined]
    module.WithinRange = WithinRange  # type: ignore[attr-defined]
    module.Default = Default  # type: ignore[attr-defined]
    return module


def _i18n() -> types.ModuleType:
    module = types.ModuleType("slicer.i18n")
    module.tr = lambda text: text  # type: ignore[attr-defined]
    module.translate = lambda context, text: text  # type: ignore[attr-defined]
    return module


def install() -> None:
    """Register the placeholders for the names the running Python lacks (idempotent)."""
    import slicer

    for name in ("qt", "ctk"):
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = types.ModuleType(name)
    for attribute, factory in (("ScriptedLoadableModule", _scripted_loadable_module),
                               ("parameterNodeWrapper", _parameter_node_wrapper), ("i18n", _i18n)):
        full = f"slicer.{attribute}"
        if full not in sys.modules:
            sys.modules[full] = factory()
            setattr(slicer, attribute, sys.modules[full])
    if not hasattr(slicer, "app"):
        slicer.app = None  # the application object; the logic never needs it


def import_module_file() -> types.ModuleType:
    """Import MedAnalysis/MedAnalysis.py (once) with the placeholders installed; returns the module."""
    if "MedAnalysis" in sys.modules:
        return sys.modules["MedAnalysis"]
    install()
    spec = importlib.util.spec_from_file_location("MedAnalysis", MODULE_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["MedAnalysis"] = module
    spec.loader.exec_module(module)
    return module
