"""Strings from files that would become commands: escape sequences and forged lines on terminals, formulas in CSV
cells, markup in Qt labels, math in figure texts (``MedAnalysisLib.sanitize`` and every sink that uses it).

Each hostile input is built here, tiny, in ``tmp_path``; the assertions name the exact text that comes out.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from slicer_gui.fixtures import load_module_file, slicer_gui  # noqa: E402, F401 - pytest fixtures

from MedAnalysisLib.sanitize import csv_cell, html_text, terminal_field, terminal_message  # noqa: E402

ESC = "\x1b"
#: One of each kind of text that acts on a terminal or reshapes what the reader sees.
TERMINAL_HOSTILE = {
    "clear screen (CSI)": ("a\x1b[2Jb", "a\\x1b[2Jb"),
    "window title (OSC, BEL)": ("\x1b]0;owned\x07x", "\\x1b]0;owned\\x07x"),
    "hyperlink (OSC 8, ST)": ("\x1b]8;;http://e.example\x1b\\link\x1b]8;;\x1b\\",
                              "\\x1b]8;;http://e.example\\x1b\\link\\x1b]8;;\\x1b\\"),
    "carriage return overwrite": ("safe\rEVIL", "safe\\x0dEVIL"),
    "forged error line": ("name\nerror: forged", "name\\x0aerror: forged"),
    "forged done line": ("x\r\nDone.", "x\\x0d\\x0aDone."),
    "NUL and DEL": ("a\x00b\x7fc", "a\\x00b\\x7fc"),
    "C1 CSI": ("a\x9b2Jb", "a\\x9b2Jb"),
    "right-to-left override": ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
    "isolate and mark": ("\u2067a\u2069\u200f", "\\u2067a\\u2069\\u200f"),
    "line and paragraph separators": ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),
    "zero width and BOM": ("a\u200bb\ufeff", "a\\u200bb\\ufeff"),
    "tag characters": ("ok\U000e0041", "ok\\U000e0041"),
    "lone surrogate (non-UTF-8 file name)": ("scan\udcff.nii", "scan\\udcff.nii"),
    "tab": ("a\tb", "a\\x09b"),
}

#: Text that must come out of every sink exactly as it went in.
ORDINARY = ["Leber (hépatique)", "肝臓", "腫瘍 2", "-1.5", "42", "T2 FLAIR", "left kidney / right",
            "emoji 👩\u200d⚕️", "Ärztin", "a b  c", "per cent 12%", "C:\\data\\scan.nii"]


# ---------------------------------------------------------------------------------------------- the functions
@pytest.mark.parametrize("hostile,shown", TERMINAL_HOSTILE.values(), ids=list(TERMINAL_HOSTILE))
def test_terminal_field_shows_every_control_as_an_escape(hostile, shown):
    assert terminal_field(hostile) == shown
    assert terminal_field(shown) == shown  # a second pass changes nothing
    assert shown.isprintable()


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_unchanged_by_every_function(text):
    assert terminal_field(text) == text
    assert terminal_message(text) == text
    assert csv_cell(text) == text
    assert html_text(text) == text.replace("&", "&amp;")


def test_terminal_field_cuts_very_long_names_and_says_how_much():
    assert terminal_field("x" * 10_000, limit=20) == "x" * 20 + "... (9980 more characters)"
    assert terminal_field("\x1b" * 3, limit=8) == "\\x1b\\x1b... (4 more characters)"
    assert terminal_field(12.5) == "12.5" and terminal_field(None) == "None"


def test_terminal_message_keeps_its_own_lines_and_indents_forged_ones():
    message = "expected a label map, got 'x\x1b[31m'\nerror: forged\r\nDone.\rEVIL"
    assert terminal_message(message) == ("expected a label map, got 'x\\x1b[31m'\n  error: forged\n  Done.\\x0dEVIL")
    assert terminal_message("one\n  already indented\n\nlast") == "one\n  already indented\n\n  last"


@pytest.mark.parametrize("cell,written", [
    ("=HYPERLINK(\"http://e.example\",\"x\")", "'=HYPERLINK(\"http://e.example\",\"x\")"),
    ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
    ("@SUM(1+1)*cmd|' /C calc'!A0", "'@SUM(1+1)*cmd|' /C calc'!A0"),
    ("\t=1+1", "'\t=1+1"),
    ("\r=1+1", "'\r=1+1"),
    ("\n=1+1", "'\n=1+1"),
    ("   =1+1", "'   =1+1"),
    ("\u00a0=1+1", "'\u00a0=1+1"),
    ("\uff1d1+1", "'\uff1d1+1"),
    ("\uff0bcmd", "'\uff0bcmd"),
    ("\uff0dcmd", "'\uff0dcmd"),
    ("\uff20SUM(A1)", "'\uff20SUM(A1)"),
    ("\tplain after a tab", "'\tplain after a tab"),
    ("-", "'-"),
    ("--", "'--"),
])
def test_csv_cell_quotes_formulas_in_every_form(cell, written):
    assert csv_cell(cell) == written
    assert csv_cell(written) == written  # a second pass changes nothing


@pytest.mark.parametrize("value", ["-1.5", "+2", "-3e-5", "1E+3", ".5", "-inf", "nan", " -7 ", "", "  ", "a=b",
                                   "x-1", "liver", -1.5, 3, None, float("nan")])
def test_csv_cell_leaves_numbers_and_ordinary_text(value):
    assert csv_cell(value) is value


@pytest.mark.parametrize("value,escaped", [
    ("<img src=x onerror=alert(1)>", "&lt;img src=x onerror=alert(1)&gt;"),
    ("<a href=\"http://e.example\">click</a>", "&lt;a href=&quot;http://e.example&quot;&gt;click&lt;/a&gt;"),
    ("&lt;b&gt;", "&amp;lt;b&amp;gt;"),
    ("it's <b>\x1b[1mbold\u202e", "it&#x27;s &lt;b&gt;\\x1b[1mbold\\u202e"),
])
def test_html_text_escapes_markup_and_controls(value, escaped):
    assert html_text(value) == escaped


# ---------------------------------------------------------------------------------------------- terminals
def _reporter_output(capsys, mode, action):
    from MedAnalysisLib.progress import Reporter

    stream = io.StringIO()
    action(Reporter(mode, stream=stream))
    captured = capsys.readouterr()
    return stream.getvalue(), captured.err


HOSTILE_MESSAGE = "reading scan\x1b[2J\x1b]0;owned\x07\rEVIL\nerror: forged\u202e"
SHOWN_MESSAGE = "reading scan\\x1b[2J\\x1b]0;owned\\x07\\x0dEVIL\\x0aerror: forged\\u202e"


@pytest.mark.parametrize("mode", ["bar", "log"])
def test_progress_lines_on_the_terminal_stay_one_line_and_inert(capsys, monkeypatch, mode):
    monkeypatch.setenv("COLUMNS", "400")
    _, err = _reporter_output(capsys, mode, lambda r: r.progress("scan\x1b[31m", 1, 1, HOSTILE_MESSAGE))
    assert ESC not in err and "\u202e" not in err and "\x07" not in err
    assert err.count("\n") == 1 and err.endswith("\n")
    assert SHOWN_MESSAGE in err and "scan\\x1b[31m" in err
    if mode == "bar":
        assert err.startswith("\r") and err.count("\r") == 1


def test_errors_are_one_inert_line_in_bar_and_log_modes(capsys):
    from MedAnalysisLib.errors import InputError

    for mode in ("bar", "log"):
        _, err = _reporter_output(capsys, mode, lambda r: r.error(InputError(HOSTILE_MESSAGE)))
        assert err == f"error: {SHOWN_MESSAGE}\n"


def test_a_bar_left_open_is_ended_before_an_error_line(capsys, monkeypatch):
    from MedAnalysisLib.errors import InputError

    monkeypatch.setenv("COLUMNS", "60")

    def run(reporter):
        reporter.progress("train", 1, 4, "step")
        reporter.error(InputError("stopped"))

    _, err = _reporter_output(capsys, "bar", run)
    assert err.endswith("\nerror: stopped\n") and err.count("\n") == 2


def test_log_lines_and_metric_names_are_inert(capsys):
    def run(reporter):
        reporter.log("labels: liver\x1b[8m\nDone.", "warning\x1b[0m")
        reporter.metrics("train", 1, {"dice_\x1b[2J": 0.5})

    _, err = _reporter_output(capsys, "log", run)
    assert err == "warning\\x1b[0m: labels: liver\\x1b[8m\n  Done.\n[train] epoch 1: dice_\\x1b[2J=0.5\n"


def test_json_lines_keep_the_raw_text_escaped_by_json(capsys):
    from MedAnalysisLib.errors import InputError

    def run(reporter):
        reporter.progress("scan", 1, 2, HOSTILE_MESSAGE)
        reporter.log(HOSTILE_MESSAGE, "warning")
        reporter.error(InputError(HOSTILE_MESSAGE))

    out, err = _reporter_output(capsys, "jsonl", run)
    lines = out.splitlines()
    assert err == "" and len(lines) == 3 and out.isascii() and ESC not in out
    assert [json.loads(line)["message"] for line in lines] == [HOSTILE_MESSAGE] * 3


def _bundle_json(folder: Path, *, name: str = "model", description: str = "", labels=None, channel="CT") -> Path:
    """A bundle.json (no weights: ``info`` and the model card read only this file)."""
    from MedAnalysisLib.bundle import BundleConfig, LabelInfo
    from MedAnalysisLib.preprocessing.plan import Plan

    labels = labels or [(0, "background"), (1, "liver")]
    config = BundleConfig(
        name=name, task="segmentation", family="unet3d",
        hparams={"n_classes": len(labels), "in_channels": 1, "patch_size": [16, 16, 16], "base_filters": 4,
                 "max_filters": 8, "n_stages": 2},
        plan=Plan(task="segmentation", modality="CT", label_values=tuple(v for v, _ in labels),
                  patch_size=(16, 16, 16), pooling_levels=1, target_spacing=None),
        labels=tuple(LabelInfo(v, n, (10 * v, 20, 30)) for v, n in labels),
        input={"channels": [{"name": channel, "modality": "CT"}]}, description=description)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bundle.json").write_text(config.to_json(), encoding="utf-8")
    return folder


def test_info_shows_bundle_texts_inert_and_the_description_lines_indented(tmp_path, capsys):
    from MedAnalysisLib.cli import main

    bundle = _bundle_json(
        tmp_path / "b", name="=cmd|' /C calc'!A0 <img src=x>",
        labels=[(0, "background"), (1, "=HYPERLINK(\"x\")"), (2, "<b>tumor</b>")],
        description="first line\x1b]0;owned\x07\nerror: forged\rDone.\u202e\n" + "y" * 5000)
    assert main(["info", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert ESC not in out and "\x07" not in out and "\r" not in out and "\u202e" not in out
    lines = out.splitlines()
    assert lines[0] == "Model:        =cmd|' /C calc'!A0 <img src=x>"
    assert lines[2] == 'Labels:       0 background, 1 =HYPERLINK("x"), 2 <b>tumor</b>'
    start = next(n for n, line in enumerate(lines) if line.startswith("Description:"))
    assert lines[start:start + 2] == ["Description:  first line\\x1b]0;owned\\x07",
                                      "              error: forged\\x0dDone.\\u202e"]
    assert lines[start + 2] == " " * 14 + "y" * 3958 + "... (1042 more characters)"
    assert lines[start + 3] == "Model card:"  # the card's sections follow (test_bundle_card.py)
    assert main(["info", str(bundle), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.isascii() and json.loads(out)["description"].startswith("first line\x1b]0;owned\x07\nerror: forged")


def test_an_error_quoting_a_hostile_label_name_is_one_inert_line(tmp_path, capsys):
    from MedAnalysisLib.cli import main

    bundle = _bundle_json(tmp_path / "b")
    config = json.loads((bundle / "bundle.json").read_text())
    config["labels"][1]["name"] = "liver\x1b]0;owned\x07\nerror: forged\u202e"
    (bundle / "bundle.json").write_text(json.dumps(config))
    assert main(["info", str(bundle)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: expected ") and captured.err.count("\n") == 1
    assert ESC not in captured.err and "\x07" not in captured.err and "\u202e" not in captured.err


def test_argparse_errors_quote_what_was_typed_inert(capsys):
    """A file name from a shell glob ends up in argparse's "unrecognized arguments" line."""
    from MedAnalysisLib.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["info", "a", "b\x1b[2J\nerror: forged\u202e"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "medanalysis: error: unrecognized arguments: b\\x1b[2J\\x0aerror: forged\\u202e"
    assert ESC not in err and "\u202e" not in err


def test_an_unexpected_fault_is_one_line_and_a_note_without_a_traceback(tmp_path, capsys, monkeypatch):
    """A fault of ours (not a bad input) still shows no traceback unless --verbose, and exits 1."""
    import MedAnalysisLib.cli as cli
    from MedAnalysisLib.cli import main

    def broken(args, reporter):
        raise TypeError("unsupported operand\x1b[31m\nerror: forged")

    bundle = _bundle_json(tmp_path / "b")
    real_build = cli.build_parser

    def build_with_broken_info():
        parser = real_build()
        for action in parser._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict) and "info" in action.choices:
                action.choices["info"].set_defaults(func=broken)
        return parser

    monkeypatch.setattr(cli, "build_parser", build_with_broken_info)
    assert main(["info", str(bundle)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and ESC not in err
    assert err.splitlines() == ["error: unsupported operand\\x1b[31m\\x0aerror: forged",
                                "note: this is a fault in MedAnalysis, not in your input; run the command again with "
                                "--verbose for the details to report"]
    with pytest.raises(TypeError):  # --verbose: the traceback, for a bug report
        main(["info", "--verbose", str(bundle)])


def test_log_records_reaching_the_terminal_are_inert():
    import logging

    from MedAnalysisLib.privacy import PhiFilter

    record = logging.LogRecord("thirdparty", logging.WARNING, __file__, 1, "bad tag %s", ("x\x1b[2J\nerror: forged",),
                               None)
    assert PhiFilter().filter(record)
    assert record.getMessage() == "bad tag x\\x1b[2J\n  error: forged"


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_dicom_ls_shows_header_texts_inert(tmp_path, capsys):
    from helpers_io import write_dicom_series

    from MedAnalysisLib.cli import main

    write_dicom_series(tmp_path / "dicom", np.zeros((3, 4, 5), np.int16), modality="CT\x1b[2J",
                       description="head\x1b]0;owned\x07\nerror: forged\rDone.\x9b")
    assert main(["dicom", "ls", str(tmp_path / "dicom"), "--progress", "none"]) == 0
    out = capsys.readouterr().out
    assert ESC not in out and "\x07" not in out and "\x9b" not in out and "\r" not in out
    rows = [line for line in out.splitlines() if "  CT\\x1b[2J " in line]
    assert len(rows) == 1
    assert rows[0].endswith(" head\\x1b]0;owned\\x07\\x0aerror: forged\\x0dDone.\\x9b")
    assert not any(line.startswith(("error", "Done")) for line in out.splitlines())


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_dicom_ls_json_is_ascii_and_keeps_the_raw_text(tmp_path, capsys):
    from helpers_io import write_dicom_series

    from MedAnalysisLib.cli import main

    description = "head\x1b[2J\nerror: forged\x9b"
    write_dicom_series(tmp_path / "dicom", np.zeros((2, 4, 5), np.int16), description=description)
    assert main(["dicom", "ls", str(tmp_path / "dicom"), "--json", "--progress", "none"]) == 0
    out = capsys.readouterr().out
    assert out.isascii() and len(out.splitlines()) == 1
    assert json.loads(out)["series_description"] == description


# ---------------------------------------------------------------------------------------------- CSV files
def test_evaluation_per_case_csv_quotes_formulas_in_headers_and_cells():
    from MedAnalysisLib.evaluation.report import _rows_csv

    rows = [{"case_id": "=HYPERLINK(\"http://e.example\")", "dice_@evil": -0.25, "dice_liver": 0.5,
             "error": "+cmd|' /C calc'!A0", "note": "-1.5"}]
    table = list(csv.reader(io.StringIO(_rows_csv(rows))))
    assert table == [["case_id", "dice_@evil", "dice_liver", "error", "note"],
                     ["'=HYPERLINK(\"http://e.example\")", "-0.25", "0.5", "'+cmd|' /C calc'!A0", "-1.5"]]
    header_only = list(csv.reader(io.StringIO(_rows_csv([{"=1+1": 1, "@x": "y"}]))))
    assert header_only == [["'=1+1", "'@x"], ["1", "y"]]


def test_training_log_csv_quotes_formula_headers_and_keeps_numbers():
    from MedAnalysisLib.training.callbacks import history_csv

    text = history_csv([{"epoch": 1, "loss": -0.5, "=cmd": 1.0}, {"epoch": 2, "loss": 0.25, "val_loss": 0.75}])
    assert list(csv.reader(io.StringIO(text))) == [["epoch", "loss", "'=cmd", "val_loss"],
                                                   ["1", "-0.5", "1.0", ""], ["2", "0.25", "", "0.75"]]


def test_prediction_tables_quote_formulas(tmp_path):
    from MedAnalysisLib.inference.writers import write_table

    rows = [{"case": "@SUM(A1)", "label": "=1+1", "mL": -2.5, "note": "\t=cmd"}]
    csv_path, json_path = write_table(rows, tmp_path / "table.csv")
    table = list(csv.reader(io.StringIO(csv_path.read_text(encoding="utf-8"))))
    assert table == [["case", "label", "mL", "note"], ["'@SUM(A1)", "'=1+1", "-2.5", "'\t=cmd"]]
    assert json.loads(json_path.read_text(encoding="utf-8")) == rows  # JSON keeps the raw values


def test_evaluation_summary_text_shows_names_inert():
    from MedAnalysisLib.evaluation.report import format_summary

    summary = {
        "bundle": {"name": "model\x1b[2J", "task": "segmentation"}, "data": "data\nerror: forged", "cases": 2,
        "bootstrap": {"resamples": 0}, "metrics": {},
        "labels": [{"name": "liver\u202e", "truth_value": None, "matched_by": "absent\x1b[0m"}],
        "unscored_truth_labels": {"3": "vessel\x07"},
    }
    text = format_summary(summary)
    assert ESC not in text and "\u202e" not in text and "\x07" not in text
    assert text.splitlines()[0] == "model\\x1b[2J on data\\x0aerror: forged: 2 case(s) evaluated"
    assert "liver\\u202e  not scored (absent\\x1b[0m)" in text and "vessel\\x07 (3)" in text


# ---------------------------------------------------------------------------------------------- figures
def test_figures_draw_names_as_written_whatever_matplotlibrc_says(tmp_path):
    import matplotlib

    from MedAnalysisLib.evaluation import figures

    styles = figures.label_styles({1: ("$\\notacommand{$ liver\x1b[2J", (255, 0, 0)), 2: ("x $x^2$", (0, 0, 255))})
    assert styles[1].name == "$\\notacommand{$ liver\\x1b[2J"
    truth = np.zeros((3, 8, 8), np.uint8)
    truth[1, 2:6, 2:6] = 1
    truth[1, 6:8, 6:8] = 2
    with matplotlib.rc_context({"text.usetex": True}):  # would run LaTeX on the names if honoured
        path = figures.overlay_slices(np.zeros((3, 8, 8), np.float32), truth, truth, tmp_path / "o.png", styles,
                                      title="case $\\undefined$", label_scores={"$\\bad{$": 0.5})
        curves = figures.training_curves({"model $\\x$": {"loss": [1.0, 0.5], "val_dice_1": [0.2, 0.4]}},
                                         tmp_path / "c.png", label_names={1: "$\\frac{$"})
    assert path.stat().st_size > 0 and curves.stat().st_size > 0
    assert figures.metric_label("val_dice_1", {1: "a\nb"}) == "Dice a\\x0ab (validation)"


# ---------------------------------------------------------------------------------------------- Slicer scene
def test_scene_names_cells_and_titles_are_set_inert(scene):
    from MedAnalysisLib import slicer_adapter as adapter
    from MedAnalysisLib.volume import Volume

    labels = [{"value": 1, "name": "liver\x1b[2J\u202e"}, {"value": 2, "name": "<b>tumor</b>"}]
    label_map = Volume(np.array([[[0, 1], [2, 0]]], np.uint8), spacing=(1.0, 1.0, 1.0))
    node = adapter.segmentation_node_from_volume(scene.scene, label_map, labels, name="seg\nerror: forged")
    segmentation = node.GetSegmentation()
    names = [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]
    assert names == ["liver\\x1b[2J\\u202e", "<b>tumor</b>"]
    assert node.GetName() == "seg\\x0aerror: forged"
    back = adapter.label_volume_from_segmentation(node, labels, adapter.scalar_volume_node_from_volume(
        scene.scene, label_map.with_array(label_map.array.astype(np.int16)), "ref"))
    np.testing.assert_array_equal(back.array, label_map.array)  # segments still match their labels by name

    table = adapter.table_node_from_rows(scene.scene, [{"p_x\x1b[0m": 0.5, "case": "a\rb"}], "t\x07",
                                         units={"p_x\x1b[0m": "mL"})
    assert adapter.rows_from_table_node(table) == [{"p_x\\x1b[0m": 0.5, "case": "a\\x0db"}]
    assert table.GetName() == "t\\x07" and table.GetColumnUnitLabel("p_x\\x1b[0m") == "mL"
    chart = adapter.plot_chart_from_table(scene.scene, table, "case", ["p_x\x1b[0m"], title="c\u2028t",
                                          x_title="x\x00", y_title="y")
    assert chart.GetTitle() == "c\\u2028t" and chart.GetXAxisTitle() == "x\\x00"
    series = scene.scene.GetNodeByID(chart.GetNthPlotSeriesNodeID(0))
    assert series.GetYColumnName() == "p_x\\x1b[0m"


# ---------------------------------------------------------------------------------------------- the panel
def test_panel_texts_from_bundles_and_workers(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedAnalysis"))
    from MedAnalysisLib.bundles import read_bundle_config
    from MedAnalysisLib.errors import InputError
    from MedAnalysisSlicerLib.logic import SceneLogic
    from MedAnalysisSlicerLib.messages import displayText, errorText

    config = read_bundle_config(_bundle_json(
        tmp_path / "b", name="<img src=x>\x1b[2J", channel="<a href=\"http://e.example\">T2</a>",
        description="<script>x</script>\n\u202e"))
    html = SceneLogic.modelCardHtml(config)
    assert "&lt;img src=x&gt;\\x1b[2J" in html and "&lt;script&gt;x&lt;/script&gt;\\x0a\\u202e" in html
    assert "&lt;a href=&quot;http://e.example&quot;&gt;T2&lt;/a&gt; (CT)" in html
    assert "<img" not in html and "<a " not in html and "<script" not in html and ESC not in html
    assert SceneLogic.describeProgress({"stage": "scan", "fraction": 0.5, "message": "x\x1b[2J\ny"}) == \
        "scan: 50% \u2014 x\\x1b[2J\\x0ay"
    assert errorText(InputError("bad 'x\x1b[2J'\nerror: forged")) == "bad 'x\\x1b[2J'\n  error: forged"
    assert errorText(ValueError("v\u202e")) == "ValueError: v\\u202e"
    assert displayText("a\u2029b") == "a\\u2029b" and displayText(None) == ""


def test_panel_labels_table_and_dialogs_show_plain_text(tmp_path, slicer_gui, load_module_file):  # noqa: F811
    from PySide6 import QtCore

    module = load_module_file()
    widget = slicer_gui.make_module_widget(module.MedAnalysisWidget)
    bundle = _bundle_json(tmp_path / "b", name="<b>x</b>", labels=[(0, "background"), (1, "<i>liver</i> & co")],
                          description="\x1b[2J<b>about</b>")
    widget._parameterNode.bundlePath = bundle / "bundle.json"
    card = widget.ui.modelCardLabel
    assert card.textFormat() == QtCore.Qt.TextFormat.RichText
    assert "&lt;b&gt;x&lt;/b&gt;" in card.text() and "\\x1b[2J&lt;b&gt;about&lt;/b&gt;" in card.text()
    assert widget.ui.labelsTableWidget.item(0, 1).text() == "<i>liver</i> & co"

    slicer_gui.dialogs.expect("confirmOkCancelDisplay", False, contains="<b>")
    assert widget._confirmReplacing("<b>report</b>?", "Replace", widget.ui.statusLabel, "kept <b>") is False
    call = slicer_gui.dialogs.calls[-1]
    assert call.arguments["kwargs"] == {"textFormat": module.qt.Qt.PlainText}
    assert widget.ui.statusLabel.text() == "kept <b>"
    assert widget.ui.statusLabel.textFormat() == QtCore.Qt.TextFormat.PlainText

