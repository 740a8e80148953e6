"""Render the MedAnalysis panel offscreen to ``Resources/Screenshots/panel.png`` (the README screenshot).

The real ``MedAnalysis.ui`` is loaded with PySide6's ``QUiLoader``. Slicer's custom widgets (CTK and MRML widgets)
do not exist outside Slicer, so plain look-alike classes are registered for them: a collapsible section header, a
path field with a browse button, a node selector drop-down. The panel is then filled the way the module fills it
after a bundle is chosen: the model card HTML and label rows come from ``MedAnalysisLogic`` itself, for a bundle
configuration built here (nothing is trained or predicted).

Usage::

    QT_QPA_PLATFORM=offscreen python Testing/render_panel.py [--out Resources/Screenshots/panel.png] [--width 440]
    QT_QPA_PLATFORM=offscreen python Testing/render_panel.py --training   # Resources/Screenshots/training.png
    QT_QPA_PLATFORM=offscreen python Testing/render_panel.py --picker --out picker.png      # a catalog model chosen
    QT_QPA_PLATFORM=offscreen python Testing/render_panel.py --uncertainty --out result.png  # after a run with maps
    QT_QPA_PLATFORM=offscreen python Testing/render_panel.py --uncertainty --bundle B.zip --out card.png  # B's own card

``--picker`` shows the model picker on a catalog entry not downloaded yet (its catalog card, Download running with
its progress); ``--uncertainty`` a finished run with the uncertainty and heatmap options ticked. The picker rows
and cards come from the logic's own functions, for entries built here.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtCore, QtGui, QtWidgets  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
UI_FILE = PROJECT_ROOT / "MedAnalysis" / "Resources" / "UI" / "MedAnalysis.ui"
DEFAULT_OUT = PROJECT_ROOT / "Resources" / "Screenshots" / "panel.png"


# ------------------------------------------------------------------ look-alikes of Slicer's custom widgets
class CollapsibleButton(QtWidgets.QWidget):
    """Looks like ctkCollapsibleButton: a button-style header with an arrow; the content below when expanded."""

    HEADER = 24

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self._text = ""
        self._collapsed = False
        self.setContentsMargins(0, self.HEADER + 2, 0, 0)
        self.setSizePolicy(QtWidgets.QSizePolicy.Preferred, QtWidgets.QSizePolicy.Maximum)

    def getText(self) -> str:
        return self._text

    def setText(self, text: str) -> None:
        self._text = text
        self.update()

    def getCollapsed(self) -> bool:
        return self._collapsed

    def setCollapsed(self, collapsed: bool) -> None:
        self._collapsed = collapsed
        layout = self.layout()
        if layout is not None:
            for index in range(layout.count()):
                _set_item_visible(layout.itemAt(index), not collapsed)
        self.setMaximumHeight(self.HEADER + 2 if collapsed else 16777215)
        self.updateGeometry()

    text = QtCore.Property(str, getText, setText)
    collapsed = QtCore.Property(bool, getCollapsed, setCollapsed)

    def sizeHint(self) -> QtCore.QSize:
        hint = super().sizeHint()
        return QtCore.QSize(hint.width(), self.HEADER + 2) if self._collapsed else hint

    def paintEvent(self, event: QtGui.QPaintEvent) -> None:
        painter = QtWidgets.QStylePainter(self)
        option = QtWidgets.QStyleOptionButton()
        option.initFrom(self)
        option.rect = QtCore.QRect(0, 0, self.width(), self.HEADER)
        option.state |= QtWidgets.QStyle.State_Raised
        painter.drawControl(QtWidgets.QStyle.CE_PushButtonBevel, option)
        arrow = QtWidgets.QStyleOption()
        arrow.initFrom(self)
        arrow.rect = QtCore.QRect(6, 6, 12, 12)
        painter.drawPrimitive(QtWidgets.QStyle.PE_IndicatorArrowRight if self._collapsed
                              else QtWidgets.QStyle.PE_IndicatorArrowDown, arrow)
        font = painter.font()
        font.setBold(False)
        painter.setFont(font)
        painter.drawText(QtCore.QRect(24, 0, self.width() - 28, self.HEADER),
                         QtCore.Qt.AlignVCenter | QtCore.Qt.AlignLeft, self._text)
        if not self._collapsed:
            painter.setPen(QtGui.QColor(190, 190, 190))
            painter.drawRect(0, self.HEADER, self.width() - 1, self.height() - self.HEADER - 1)


def _set_item_visible(item: QtWidgets.QLayoutItem, visible: bool) -> None:
    if item.widget() is not None:
        item.widget().setVisible(visible)
    elif item.layout() is not None:
        for index in range(item.layout().count()):
            _set_item_visible(item.layout().itemAt(index), visible)


class PathLineEdit(QtWidgets.QWidget):
    """Looks like ctkPathLineEdit: an editable path drop-down and a browse button."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        self.combo = QtWidgets.QComboBox(self)
        self.combo.setEditable(True)
        self.combo.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
        browse = QtWidgets.QToolButton(self)
        browse.setText("...")
        layout.addWidget(self.combo)
        layout.addWidget(browse)

    def setCurrentPath(self, path: str) -> None:
        self.combo.setEditText(path)


class NodeComboBox(QtWidgets.QComboBox):
    """Looks like qMRMLNodeComboBox: a drop-down showing the selected node's name."""

    def setCurrentNodeName(self, name: str) -> None:
        self.clear()
        self.addItem(name)


class PlotWidget(QtWidgets.QFrame):
    """Stands in for qMRMLPlotWidget: an empty white plot area (curves appear there during training)."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QtWidgets.QFrame.StyledPanel)
        self.setAutoFillBackground(True)
        palette = self.palette()
        palette.setColor(QtGui.QPalette.Window, QtGui.QColor("white"))
        self.setPalette(palette)


LOOK_ALIKES = {
    "ctkCollapsibleButton": CollapsibleButton,
    "ctkPathLineEdit": PathLineEdit,
    "qMRMLNodeComboBox": NodeComboBox,
    "qMRMLWidget": QtWidgets.QWidget,
    "qMRMLPlotWidget": PlotWidget,
}


class Loader(QUiLoader):
    def createWidget(self, class_name: str, parent: QtWidgets.QWidget | None = None,  # noqa: N802
                     name: str = "") -> QtWidgets.QWidget:
        if class_name in LOOK_ALIKES:
            widget = LOOK_ALIKES[class_name](parent)
            widget.setObjectName(name)
            return widget
        return super().createWidget(class_name, parent, name)


# ------------------------------------------------------------------ filling the panel like the module does
def example_card():
    """A bundle configuration like the self-test's segmentation bundle (no weights needed for the model card)."""
    sys.path.insert(0, str(PROJECT_ROOT))
    from MedAnalysisLib.bundles import BundleConfig, LabelInfo
    from MedAnalysisLib.preprocessing.plan import Plan

    liver = {"category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
             "type": {"scheme": "SCT", "code": "10200004", "meaning": "Liver"}}
    tumor = {"category": {"scheme": "SCT", "code": "49755003", "meaning": "Morphologically Altered Structure"},
             "type": {"scheme": "SCT", "code": "108369006", "meaning": "Neoplasm"}}
    return BundleConfig(
        name="Liver and tumour (CT)", task="segmentation", family="unet3d",
        card={"clinical_use": "not for clinical use", "intended_use": "Research on contrast-enhanced abdominal CT.",
              "license": "CC-BY-4.0", "authors": ["MedAnalysis contributors"], "version": "1.2.0"},
        hparams={"n_classes": 3, "in_channels": 1},
        plan=Plan(task="segmentation", modality="CT", label_values=(0, 1, 2), target_spacing=(0.8, 0.8, 2.5)),
        labels=(LabelInfo(0, "background", (0, 0, 0)), LabelInfo(1, "liver", (221, 130, 101), liver),
                LabelInfo(2, "tumor", (144, 238, 144), tumor)),
        input={"channels": [{"name": "CT", "modality": "CT"}]},
    )


def _shown_path(bundle: Path) -> str:
    """A cached model's path as it reads on Linux with the default cache folder (the picture should not show where
    this machine keeps its cache); any other path as it is."""
    from MedAnalysisLib.catalog import model_cache_dir

    try:
        inside = Path(bundle).resolve().relative_to(model_cache_dir().resolve())
    except ValueError:
        return str(bundle)
    return f"~/.cache/medanalysis/models/{inside.as_posix()}"


def fill(panel: QtWidgets.QWidget, bundle: Path | None = None) -> None:
    """Fill the panel as the module does once a bundle is chosen: ``bundle``'s own model card (read by the logic, as
    the panel reads it), or the example configuration."""
    sys.path.insert(0, str(PROJECT_ROOT / "MedAnalysis"))
    from MedAnalysisSlicerLib.logic import SceneLogic as logic_class
    card = logic_class.readModelCard(str(bundle)) if bundle is not None else example_card()

    def find(name: str):
        widget = panel.findChild(QtWidgets.QWidget, name)
        assert widget is not None, f"no widget {name} in the panel"
        return widget

    find("bundlePathLineEdit").setCurrentPath(_shown_path(bundle) if bundle is not None
                                              else "/data/models/liver-tumour-ct.zip")
    find("modelCardLabel").setText(logic_class.modelCardHtml(card))
    table = find("labelsTableWidget")
    labels = logic_class.displayedLabels(card)
    table.verticalHeader().setDefaultSectionSize(20)
    table.setRowCount(len(labels))
    for row, label in enumerate(labels):
        value = QtWidgets.QTableWidgetItem(str(label.value))
        value.setData(QtCore.Qt.DecorationRole, QtGui.QColor(*label.color))
        table.setItem(row, 0, value)
        table.setItem(row, 1, QtWidgets.QTableWidgetItem(label.name))
        table.setItem(row, 2, QtWidgets.QTableWidgetItem(logic_class.terminologyMeaning(label)))
    table.resizeColumnsToContents()
    table.setFixedHeight(table.horizontalHeader().height() + sum(table.rowHeight(r) for r in range(len(labels))) + 4)

    find("inputChannelLabel0").setText(logic_class.channelLabelText(card, 0))
    find("inputVolumeSelector0").setCurrentNodeName("Abdomen CT" if bundle is None else "Scan")
    for hidden in ("inputVolumeSelector1", "inputVolumeSelector2", "inputChannelLabel1", "inputChannelLabel2",
                   "inputWarningLabel", "outputLabelmapSelector", "outputLabelmapLabel", "progressBar"):
        find(hidden).setVisible(False)
    find("outputSegmentationSelector").setCurrentNodeName("Create new on Apply")
    find("outputTableSelector").setCurrentNodeName("Create new on Apply")
    find("perSlicePlotCheckBox").setEnabled(False)  # as the module does for segmentation bundles
    find("applyButton").setEnabled(True)
    find("statusLabel").setText("")


def example_entries(bundle: Path | None = None):
    """Picker rows as the logic builds them, from the shipped catalog: the model of ``bundle`` (else the first one)
    pulled into a scratch cache, removed at exit (so it reads "cached"), the others as they are on a fresh
    installation, and a local bundle."""
    import atexit
    import shutil
    import tempfile

    sys.path.insert(0, str(PROJECT_ROOT / "MedAnalysis"))
    from MedAnalysisLib.catalog import list_models, pull
    from MedAnalysisLib.catalog.sources import default_catalogs
    from MedAnalysisSlicerLib.models import ModelCatalogLogic, PickerEntry

    shipped = default_catalogs()[:1]  # the catalog in the package, whatever MEDANALYSIS_CATALOGS holds
    cache = Path(tempfile.mkdtemp(prefix="render-cache-"))
    atexit.register(shutil.rmtree, cache, True)
    listed = list_models(shipped, cache_dir=cache, offline=True).models
    wanted = [listing for listing in listed if bundle is not None and listing.entry.id in str(bundle)] or listed[:1]
    for listing in wanted:
        pull(listing.entry.key, catalogs=shipped, cache_dir=cache)
    if wanted:
        listed = list_models(shipped, cache_dir=cache, offline=True).models
    rows = [ModelCatalogLogic._catalogRow(listing) for listing in listed]
    rows.append(PickerEntry("local", "/data/models/my-liver-model.zip", "My liver model", "CT", "segmentation",
                            "local", "/data/models/my-liver-model.zip"))
    return rows


def show_picker(panel: QtWidgets.QWidget, chosen: int, bundle: Path | None = None) -> None:
    """Fill the picker; ``chosen`` 2 shows the catalog card of an entry not downloaded yet, downloading; with
    ``bundle``, the row of the cached catalog model at that path is the chosen one."""
    sys.path.insert(0, str(PROJECT_ROOT / "MedAnalysis"))
    from MedAnalysisSlicerLib.logic import SceneLogic

    rows = example_entries(bundle)
    if bundle is not None:
        models = [getattr(row.listing, "entry", None) for row in rows]
        ids = [getattr(entry, "id", None) for entry in models]
        chosen = next((n + 1 for n, model_id in enumerate(ids) if model_id and model_id in str(bundle)), chosen)
    combo = panel.findChild(QtWidgets.QComboBox, "modelComboBox")
    combo.addItem(f"Choose a model ({len(rows)} listed)")
    for row in rows:
        combo.addItem(row.text)
    combo.setCurrentIndex(chosen)
    check = panel.findChild(QtWidgets.QCheckBox, "matchModalityCheckBox")
    check.setText("Only models for the input's modality" + (" (CT)" if bundle is None else ""))
    check.setChecked(False)  # both shipped models listed (one MR, one CT)
    downloading = rows[chosen - 1].needsDownload
    for name in ("downloadButton", "downloadProgressBar"):
        panel.findChild(QtWidgets.QWidget, name).setVisible(downloading)
    status = panel.findChild(QtWidgets.QLabel, "modelStatusLabel")
    status.setVisible(downloading)
    if downloading:
        panel.findChild(QtWidgets.QPushButton, "downloadButton").setText("Cancel")
        panel.findChild(QtWidgets.QProgressBar, "downloadProgressBar").setValue(42)
        size = rows[chosen - 1].listing.entry.size / 1e6
        status.setText(SceneLogic.describeProgress({"stage": "download", "fraction": 0.42, "eta_s": 3,
                                                    "message": f"{0.42 * size:.1f} of {size:.1f} MB"}))
        panel.findChild(QtWidgets.QWidget, "bundlePathLineEdit").setCurrentPath("")
        panel.findChild(QtWidgets.QLabel, "modelCardLabel").setText(
            SceneLogic.catalogCardHtml(rows[chosen - 1].listing.entry))
        for name in ("labelsTableWidget", "labelsTitleLabel"):
            panel.findChild(QtWidgets.QWidget, name).setVisible(False)
        panel.findChild(QtWidgets.QWidget, "applyButton").setEnabled(False)


def show_uncertainty(panel: QtWidgets.QWidget) -> None:
    """A finished run with the uncertainty and overlay options ticked."""
    for name in ("uncertaintyCheckBox", "showOverlayCheckBox"):
        panel.findChild(QtWidgets.QCheckBox, name).setChecked(True)
    panel.findChild(QtWidgets.QCheckBox, "explainCheckBox").setEnabled(False)  # segmentation bundle
    panel.findChild(QtWidgets.QLabel, "statusLabel").setText("Done in 9 s.")


def _quiet_designer_messages(kind: QtCore.QtMsgType, context: QtCore.QMessageLogContext, message: str) -> None:
    # QUiLoader cannot read the CTK enum sets (ctkPathLineEdit::Dirs|Files) into a look-alike: expected, not news.
    if not message.startswith("Designer: The set-type property"):
        sys.stderr.write(message + "\n")


def show_training(panel: QtWidgets.QWidget) -> None:
    """Expand the Training section with two scene cases listed, as after pressing Add twice."""
    for name in ("modelCollapsibleButton", "outputsCollapsibleButton"):
        panel.findChild(QtWidgets.QWidget, name).setCollapsed(True)
    panel.findChild(QtWidgets.QWidget, "trainingCollapsibleButton").setCollapsed(False)
    for hidden in ("trainingDatasetPathLineEdit", "trainingDatasetLabel", "trainingProgressBar"):
        panel.findChild(QtWidgets.QWidget, hidden).setVisible(False)
    panel.findChild(QtWidgets.QWidget, "trainingVolumeSelector").setCurrentNodeName("case 3 CT")
    panel.findChild(QtWidgets.QWidget, "trainingSegmentationSelector").setCurrentNodeName("case 3 segmentation")
    cases = panel.findChild(QtWidgets.QTableWidget, "trainingCasesTableWidget")
    cases.setRowCount(2)
    for row in range(2):
        cases.setItem(row, 0, QtWidgets.QTableWidgetItem(f"case {row + 1} CT"))
        cases.setItem(row, 1, QtWidgets.QTableWidgetItem(f"case {row + 1} segmentation"))
    cases.verticalHeader().setDefaultSectionSize(20)
    cases.setFixedHeight(cases.horizontalHeader().height() + 2 * 20 + 4)
    panel.findChild(QtWidgets.QWidget, "trainingOutputPathLineEdit").setCurrentPath("/data/models/my-liver-model.zip")
    panel.findChild(QtWidgets.QWidget, "trainButton").setEnabled(True)


def render(out: Path, width: int, training: bool = False, picker: bool = False, uncertainty: bool = False,
           bundle: Path | None = None) -> Path:
    QtCore.qInstallMessageHandler(_quiet_designer_messages)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    app.setStyle("Fusion")
    font = app.font()
    font.setPointSize(9)
    app.setFont(font)
    loader = Loader()
    # Designer connections target Slicer signals (mrmlSceneChanged) the look-alikes do not have: leave them out.
    text = UI_FILE.read_text(encoding="utf-8")
    start, end = text.find("<connections>"), text.find("</connections>")
    if start >= 0:
        text = text[:start] + text[end + len("</connections>"):]
    buffer = QtCore.QBuffer()
    buffer.setData(QtCore.QByteArray(text.encode("utf-8")))
    buffer.open(QtCore.QIODevice.ReadOnly)
    panel = loader.load(buffer)
    if panel is None:
        raise RuntimeError(f"QUiLoader could not load {UI_FILE}: {loader.errorString()}")
    for collapsible in panel.findChildren(CollapsibleButton):
        collapsible.setCollapsed(collapsible.getCollapsed())
    fill(panel, bundle)
    show_picker(panel, 2 if picker else 1, None if picker else bundle)
    if uncertainty:
        show_uncertainty(panel)
    if training:
        show_training(panel)
    panel.setFixedWidth(width)
    panel.adjustSize()
    panel.resize(width, panel.sizeHint().height())
    layout = panel.layout()
    layout.activate()
    # The collapsible look-alike's size hint ignores height-for-width: give each wrapped label the height its final
    # width needs, then lay out again.
    panel.show()  # offscreen: gives every label its real width
    QtWidgets.QApplication.processEvents()
    for label in panel.findChildren(QtWidgets.QLabel):
        if label.wordWrap() and label.isVisible():
            label.setMinimumHeight(max(0, label.heightForWidth(label.width())))
    panel.resize(width, panel.sizeHint().height())
    layout.activate()
    QtWidgets.QApplication.processEvents()
    image = panel.grab()
    out.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(out)):
        raise RuntimeError(f"could not write {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--width", type=int, default=440)
    parser.add_argument("--training", action="store_true",
                        help="show the Training section expanded (default output Resources/Screenshots/training.png)")
    parser.add_argument("--picker", action="store_true", help="a catalog model not downloaded yet, downloading")
    parser.add_argument("--uncertainty", action="store_true", help="a finished run with uncertainty maps")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="show this bundle's own model card (default: an example configuration)")
    args = parser.parse_args(argv)
    out = args.out if args.out != DEFAULT_OUT or not args.training else DEFAULT_OUT.with_name("training.png")
    print(render(out, args.width, args.training, args.picker, args.uncertainty, args.bundle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
