"""A real MRML scene from slicer-core with the application logic and module logics wired, for tests.

The Slicer desktop application cannot run here, but slicer-core ships Slicer's real scene, node classes and module
logics. :func:`make_scene` wires them the way the application does at start-up (application logic, color logic with
the default color nodes, volumes, segmentations, tables, plots and subject-hierarchy logics), so node creation,
segment import/export and the subject hierarchy behave exactly as in Slicer. Building one costs a few tens of
milliseconds, so every test gets its own scene.

The terminologies logic is left out: its JSON dictionaries are not in the slicer-core wheel. Segment terminology is
a plain serialized string on each segment and needs no logic.
"""

from __future__ import annotations

from dataclasses import dataclass

import slicer
from vtkmodules.vtkCommonCore import vtkCollection


@dataclass
class SlicerScene:
    """A scene and the logics wired to it (keep this object alive as long as the scene is used)."""

    scene: slicer.vtkMRMLScene
    app_logic: slicer.vtkSlicerApplicationLogic
    volumes_logic: slicer.vtkSlicerVolumesLogic
    segmentations_logic: slicer.vtkSlicerSegmentationsModuleLogic
    subject_hierarchy_logic: slicer.vtkSlicerSubjectHierarchyModuleLogic
    tables_logic: slicer.vtkSlicerTablesLogic
    plots_logic: slicer.vtkSlicerPlotsLogic

    def close(self) -> None:
        """Clear the scene and detach the logics (breaks the reference cycles between them)."""
        self.scene.Clear(1)
        for logic in (self.plots_logic, self.tables_logic, self.subject_hierarchy_logic, self.segmentations_logic,
                      self.volumes_logic):
            logic.SetMRMLScene(None)
        self.app_logic.SetMRMLScene(None)


def _wire(logic, scene: slicer.vtkMRMLScene, app_logic: slicer.vtkSlicerApplicationLogic, name: str):
    logic.SetMRMLScene(scene)
    logic.SetMRMLApplicationLogic(app_logic)
    app_logic.SetModuleLogic(name, logic)
    return logic


def make_scene() -> SlicerScene:
    """A fresh scene with the application logic and the module logics MedAnalysis uses."""
    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)

    # The view layout's node, as the application's layout logic creates it: the plots and tables logics switch
    # layouts through it (ShowChartInLayout), and view nodes without a parent layout node belong to it.
    layout = slicer.vtkMRMLLayoutNode()
    layout.SetSingletonTag("vtkMRMLLayoutNode")
    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
    scene.AddNode(layout)

    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    app_logic.GetColorLogic().AddDefaultColorNodes()
    app_logic.SetSliceLogics(vtkCollection())
    app_logic.SetViewLogics(vtkCollection())

    return SlicerScene(
        scene=scene,
        app_logic=app_logic,
        volumes_logic=_wire(slicer.vtkSlicerVolumesLogic(), scene, app_logic, "Volumes"),
        segmentations_logic=_wire(slicer.vtkSlicerSegmentationsModuleLogic(), scene, app_logic, "Segmentations"),
        subject_hierarchy_logic=_wire(slicer.vtkSlicerSubjectHierarchyModuleLogic(), scene, app_logic,
                                      "SubjectHierarchy"),
        tables_logic=_wire(slicer.vtkSlicerTablesLogic(), scene, app_logic, "Tables"),
        plots_logic=_wire(slicer.vtkSlicerPlotsLogic(), scene, app_logic, "Plots"),
    )


def oblique_ct_volume():
    """A small oblique, anisotropic CT-like volume (int16, a bright box in noise) for the Slicer tests."""
    import numpy as np

    from MedAnalysisLib.volume import Volume, rotation_about_axis

    rng = np.random.default_rng(0)
    voxels = rng.normal(0, 20, (12, 20, 24)).astype(np.int16)
    voxels[4:9, 6:14, 8:16] += 200
    return Volume(voxels, spacing=(0.9, 1.1, 2.5), origin=(-20.5, 14.0, 31.25),
                  direction=rotation_about_axis("z", 20) @ rotation_about_axis("x", 10))
