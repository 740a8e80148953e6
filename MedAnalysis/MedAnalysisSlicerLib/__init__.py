"""The MedAnalysis Slicer module's library: everything of the module that needs no Qt.

- :mod:`.logic`: :class:`~.logic.SceneLogic`, the scene <-> ``MedAnalysisLib`` glue (takes the scene, the interpreter
  and the installer by injection);
- :mod:`.installer`: :class:`~.installer.PackageInstaller`, the Python packages MedAnalysis needs in Slicer;
- :mod:`.jobs`: :class:`~.jobs.MedAnalysisJob`, a background ``medanalysis`` run with a non-blocking stop;
- :mod:`.selftest`: the self-test scenario shared by the module's test and the pytest suite.

``MedAnalysis.py`` (next to this folder) holds only what needs Slicer's Qt layer: the module, its parameter node, the
widget and a thin test. Requires Python 3.10 or newer (Slicer 5.10 or newer); the module file checks that first.
"""
