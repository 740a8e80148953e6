"""Batch prediction over many cases: discovery, deterministic sharding, resume, and isolation of bad cases.

What counts as a case (``discover_cases``; each input is classified by
:func:`MedAnalysisLib.data.sources.resolve_source`, the same function ``plan``, ``train`` and ``evaluate`` use):

* an image file (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``): one case named after the file;
* a Medical Segmentation Decathlon folder or its ``dataset.json``, or a ``.csv`` manifest: one case per entry, with
  every image channel the model needs (see :func:`MedAnalysisLib.data.datasets.load_dataset`);
* a folder holding image files: each file is a case;
* any other folder, or a DICOM file: DICOM, scanned recursively; each image series is a case, named after its
  folder (plus ``_s<N>`` when a folder holds several series; ``--series`` picks one).

Before the model is loaded (which imports TensorFlow) and before any case is run, everything that can be judged from
``bundle.json``, the inputs and their headers is checked: the bundle and options once
(:func:`~MedAnalysisLib.inference.writers.check_formats`, a refusal with exit code 2), the inputs (a missing file is
refused), then each case's input from its headers (DICOM SEG: DICOM input with a FrameOfReferenceUID, single-frame
images). A case whose input cannot give one format is reported at once and still gets every other output;
``not_written`` in the summary and in the case's sidecar says what was left out and why, and the command exits 1.
When no case to run can give any of the requested formats (``--format dicom-seg`` on NIfTI files), the batch is
refused before any work.

Sharding (``--shard i/n``): cases are sorted by name and case number ``m`` (0-based) goes to shard ``m % n + 1``, so
shards are balanced, disjoint, and together cover every case once, whatever machine runs them.

Resume: a case whose sidecar ``<case>.json`` exists was finished (the sidecar is written last, atomically, so it only
exists when every output of the case is complete). It is skipped when the sidecar shows the same bundle (weights
sha256) and the same options (:func:`requested_options`, recorded in the sidecar as ``inference.requested``); a case
made by another bundle or with other options is refused, with the difference, before any case runs, unless
``overwrite`` recomputes every case. A case without a sidecar is (re)computed. A case that fails is reported (type
and message) and the batch goes on; the command exits 1 when any case failed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from MedAnalysisLib.data.sources import image_stem, is_image_file, resolve_source
from MedAnalysisLib.errors import CancelledError, InputError, MedAnalysisError
from MedAnalysisLib.inference.writers import SIDECAR_SUFFIX, check_formats, format_problems, write_prediction
from MedAnalysisLib.io.atomic import write_text_atomic
from MedAnalysisLib.privacy import redact


@dataclass(frozen=True)
class CaseInput:
    """One case to predict.

    Attributes:
        case_id: Name used for output files (letters, digits, ``-``, ``_``, ``.``).
        images: One path per channel (files or DICOM folders/files).
        series: SeriesInstanceUID of the series to load from a DICOM folder, or None.
    """

    case_id: str
    images: tuple[str, ...]
    series: str | None = None


@dataclass
class BatchOptions:
    """How a batch runs (the ``medanalysis predict`` options)."""

    formats: tuple[str, ...] = ("nifti",)
    write_probabilities: bool = False
    postprocess: tuple[str, ...] | None = None
    overlap: float | None = None
    tta: bool | None = None
    batch_size: int | None = None
    precision: str = "float32"
    memory_budget_mb: float | None = None
    series: str | None = None
    shard: tuple[int, int] = (1, 1)
    overwrite: bool = False


@dataclass
class BatchSummary:
    """What happened to each case of this shard."""

    shard: tuple[int, int]
    total_cases: int
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    out_dir: str = ""
    #: Outputs a case's input cannot give (``case_id``, ``output``, ``reason``); the case's other outputs exist.
    not_written: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def safe_case_id(text: str) -> str:
    """A file-name-safe case id (other characters become ``_``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned or "case"


def _dicom_cases(folder: Path, series: str | None) -> list[CaseInput]:
    from MedAnalysisLib.io.dicom import scan_dicom_folder

    found = [s for s in scan_dicom_folder(folder, recursive=True) if not getattr(s, "is_localizer", False)]
    if series is not None:
        found = [s for s in found if s.series_instance_uid == series or str(s.index) == str(series)]
        if not found:
            raise InputError(f"expected series {series!r} in the DICOM folder {folder.name!r}, found none")
    if not found:
        raise InputError(f"expected DICOM image series in {folder.name!r}, found none")
    by_folder: dict[Path, list[Any]] = {}
    for info in found:
        parent = Path(info.files[0]).parent if info.files else folder
        by_folder.setdefault(parent, []).append(info)
    cases = []
    for parent, infos in by_folder.items():
        try:
            stem = parent.relative_to(folder.parent).as_posix()
        except ValueError:
            stem = parent.name
        for info in infos:
            name = stem if len(infos) == 1 else f"{stem}_s{info.series_number if info.series_number is not None else info.index}"
            cases.append(CaseInput(safe_case_id(name), (str(folder),), info.series_instance_uid))
    return cases


def discover_cases(inputs: Sequence[str | Path], *, series: str | None = None) -> list[CaseInput]:
    """Turn command-line inputs into cases (see the module docstring), sorted by case id, ids unique.

    Raises:
        InputError: An input does not exist, holds nothing to predict, or two cases would get the same name.
    """
    cases: list[CaseInput] = []
    for raw in inputs:
        source = resolve_source(raw)
        path = source.path
        if source.kind in ("msd", "csv"):
            from MedAnalysisLib.data.datasets import load_dataset

            dataset = load_dataset(path)
            cases.extend(CaseInput(safe_case_id(c.case_id), tuple(str(p) for p in c.images), c.series)
                         for c in dataset.cases)
        elif source.kind == "image":
            cases.append(CaseInput(safe_case_id(image_stem(path.name)), (str(path),)))
        elif source.kind == "images":
            for child in sorted(path.iterdir()):
                if is_image_file(child):
                    cases.append(CaseInput(safe_case_id(image_stem(child.name)), (str(child),)))
        elif path.is_dir():
            cases.extend(_dicom_cases(path, series))
        else:  # a single DICOM file
            cases.append(CaseInput(safe_case_id(path.stem), (str(path),), series))
    names = [c.case_id for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"expected unique case names, got several inputs named {duplicates}; rename or split them")
    return sorted(cases, key=lambda c: c.case_id)


def select_shard(cases: Sequence[CaseInput], shard: tuple[int, int]) -> list[CaseInput]:
    """Cases of shard ``i`` of ``n`` (1-based): every n-th case of the sorted list, starting at i - 1."""
    index, count = shard
    if count < 1 or not 1 <= index <= count:
        raise InputError(f"expected a shard i/n with 1 <= i <= n, got {index}/{count}")
    ordered = sorted(cases, key=lambda c: c.case_id)
    return [case for m, case in enumerate(ordered) if m % count == index - 1]


def header_problems(case: CaseInput, formats: Sequence[str], scans: dict[str, list[Any]] | None = None) -> dict[str, str]:
    """What keeps a requested format from being written for this case, judged from file names and DICOM headers
    only (no pixels): ``{format: reason}``. ``scans`` caches folder scans between cases of one study."""
    if "dicom-seg" not in formats:
        return {}
    from MedAnalysisLib.io import is_dicom_path
    from MedAnalysisLib.io.dicom import scan_dicom_folder

    image = case.images[0].rsplit("#", 1)[0] if "#" in case.images[0] else case.images[0]
    if not is_dicom_path(image):
        return {"dicom-seg": "the input is not a DICOM series (a DICOM SEG references its source images)"}
    scans = {} if scans is None else scans
    if image not in scans:
        try:
            scans[image] = scan_dicom_folder(image, recursive=True)
        except (MedAnalysisError, OSError):
            scans[image] = []
    found = [s for s in scans[image] if case.series is None or s.series_instance_uid == case.series]
    if len(found) != 1:
        return {}  # loading the case will say what is wrong with it
    info = found[0]
    if not info.frame_of_reference_uid:
        return {"dicom-seg": "the DICOM series has no FrameOfReferenceUID, which a DICOM SEG needs to place its frames"}
    if len(set(info.files)) != info.n_slices:
        return {"dicom-seg": f"expected one single-frame DICOM image per slice, got {len(set(info.files))} file(s) "
                             f"for {info.n_slices} slices (enhanced multi-frame images)"}
    return {}


def load_case(case: CaseInput) -> list[Any]:
    """Load the channel volumes of one case (files or DICOM); a single slice loads as a one-slice volume (as in
    training), for slice classifiers."""
    from MedAnalysisLib.io import load_volume

    return [load_volume(image, series=case.series, allow_2d=True) if case.series else load_volume(image, allow_2d=True)
            for image in case.images]


def requested_options(config: Any, options: BatchOptions) -> dict[str, Any]:
    """What decides a case's outputs, as its sidecar records it (``inference.requested``) and a resume compares it:
    formats, probabilities, overlap/TTA/post-processing resolved against the bundle's defaults, precision as asked,
    series. Batch size and memory budget only change how the work is split, so they are not part of it."""
    from MedAnalysisLib.inference.predict import _settings

    overlap, tta, steps = _settings(config, options.overlap, options.tta, options.postprocess)
    formats = options.formats if config.task == "segmentation" else ()
    return {"formats": sorted(formats), "probabilities": bool(options.write_probabilities), "overlap": overlap,
            "tta": tta, "postprocess": list(steps), "precision": options.precision, "series": options.series}


def resume_problem(sidecar_path: Path, weights_sha256: str, requested: dict[str, Any]) -> str | None:
    """Why the outputs a sidecar describes cannot stand for this run (None when the same bundle and options made
    them)."""
    try:
        record = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "its sidecar is not readable JSON"
    if not isinstance(record, dict):
        return "its sidecar is not a JSON object"
    made_by = (record.get("bundle") or {}).get("weights_sha256")
    if made_by != weights_sha256:
        return f"made by another bundle (weights sha256 {str(made_by)[:12]}..., this one {weights_sha256[:12]}...)"
    before = (record.get("inference") or {}).get("requested")
    if not isinstance(before, dict):
        return "made by a version that did not record its options"
    changed = [f"{key} {before.get(key)!r} (now {value!r})" for key, value in requested.items()
               if before.get(key) != value]
    return f"made with {', '.join(changed)}" if changed else None


def run_batch(
    bundle: Any,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    options: BatchOptions | None = None,
    *,
    reporter: Any = None,
    stop_flag: Any = None,
) -> BatchSummary:
    """Predict every case of this shard and write the outputs (see the module docstring).

    Args:
        bundle: Bundle path or :class:`~MedAnalysisLib.bundles.LoadedBundle` (loaded once for all cases).
        inputs: Files, folders, dataset descriptions.
        out_dir: Output folder.
        options: :class:`BatchOptions`.
        reporter: Progress/log sink (:class:`~MedAnalysisLib.progress.Reporter`).
        stop_flag: Checked between cases and model calls; a stop raises :class:`CancelledError` after the current
            model call (completed cases stay complete).

    Returns:
        A :class:`BatchSummary`, also written as ``batch_summary[_shard-i-of-n].json``.

    Raises:
        InputError: Before any case runs: missing inputs, formats the bundle or no case can give, outputs that other
            settings made (without ``overwrite``).
    """
    from MedAnalysisLib.bundles import LoadedBundle, load_bundle, read_bundle_config
    from MedAnalysisLib.inference.predict import predict

    options = options or BatchOptions()
    out = Path(out_dir)
    # What bundle.json, the inputs and their headers can tell is checked before the model (and TensorFlow) loads.
    config = bundle.config if isinstance(bundle, LoadedBundle) else read_bundle_config(Path(bundle))
    check_formats(options.formats, config.task, config.labels)
    all_cases = discover_cases(inputs, series=options.series)
    cases = select_shard(all_cases, options.shard)
    requested = requested_options(config, options)
    finished = {c.case_id for c in cases if (out / f"{c.case_id}{SIDECAR_SUFFIX}").is_file()}
    to_run = [c for c in cases if options.overwrite or c.case_id not in finished]
    formats = options.formats if config.task == "segmentation" else ()
    scans: dict[str, list[Any]] = {}
    unavailable = {case.case_id: header_problems(case, formats, scans) for case in to_run}
    if formats and to_run and all(set(formats) <= set(unavailable[c.case_id]) for c in to_run):
        first = to_run[0].case_id
        raise InputError(f"expected input that can give --format {' / '.join(formats)}, got {len(to_run)} case(s) "
                         f"that cannot (e.g. {first}: {'; '.join(sorted(set(unavailable[first].values())))}); "
                         "nothing was run")
    summary = BatchSummary(options.shard, len(all_cases), out_dir=str(out))
    log = reporter.log if reporter is not None else (lambda message, level="info": None)
    log(f"{len(cases)} of {len(all_cases)} case(s) in shard {options.shard[0]}/{options.shard[1]}; "
        f"bundle {config.name}")
    for case in to_run:  # every case's format needs, from headers, before the first model call
        for fmt, reason in unavailable[case.case_id].items():
            log(f"{case.case_id}: --format {fmt} cannot be written: {reason}; its other outputs will be", "warning")
    loaded = bundle if isinstance(bundle, LoadedBundle) else load_bundle(Path(bundle))
    if not options.overwrite:
        problems = {c: p for c in sorted(finished)
                    if (p := resume_problem(out / f"{c}{SIDECAR_SUFFIX}", loaded.weights_sha256, requested))}
        if problems:
            listed = "; ".join(f"{case}: {reason}" for case, reason in list(problems.items())[:3])
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise InputError(f"expected the finished cases in {out} to come from this bundle with these options (a "
                             f"re-run skips those), got {len(problems)} made otherwise: {listed}{more}; pass "
                             "--overwrite to recompute them, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for number, case in enumerate(cases):
        if stop_flag is not None and stop_flag.is_set():
            raise CancelledError(f"stopped after {number} of {len(cases)} case(s); completed outputs are kept")
        if reporter is not None:
            reporter.progress("cases", number, len(cases), case.case_id)
        if not options.overwrite and case.case_id in finished:
            summary.skipped.append(case.case_id)
            log(f"{case.case_id}: made by this bundle with these options, skipped")
            continue
        try:
            volumes = load_case(case)
            problems = {**unavailable.get(case.case_id, {}), **format_problems(formats, volumes[0])}
            for fmt, reason in problems.items():
                if fmt not in unavailable.get(case.case_id, {}):
                    log(f"{case.case_id}: --format {fmt} cannot be written: {reason}; its other outputs will be",
                        "warning")
            prediction = predict(
                loaded, volumes, overlap=options.overlap, tta=options.tta, postprocess=options.postprocess,
                batch_size=options.batch_size, precision=options.precision, memory_budget_mb=options.memory_budget_mb,
                return_probabilities=options.write_probabilities, stop_flag=stop_flag,
            )
            prediction.details["requested"] = requested  # the sidecar records it; a re-run compares it
            write_prediction(prediction, out, case.case_id, input_volume=volumes[0], labels=loaded.labels,
                             formats=options.formats if prediction.label is not None else (),
                             write_probability_map=options.write_probabilities, unavailable=problems)
            summary.not_written.extend({"case_id": case.case_id, "output": f"label_{fmt}", "reason": reason}
                                       for fmt, reason in problems.items())
        except CancelledError:
            raise
        except (MedAnalysisError, OSError, ValueError, RuntimeError) as error:
            # the summary is a file, not a message: it passes the PHI filter here (third-party errors may quote values)
            summary.failed.append({"case_id": case.case_id, "error_type": type(error).__name__,
                                   "message": redact(str(error))})
            log(f"{case.case_id}: failed ({type(error).__name__}: {error}); continuing", "warning")
            continue
        summary.done.append(case.case_id)
        log(f"{case.case_id}: done in {prediction.timings.get('total', 0.0):.1f} s")
    if reporter is not None:
        reporter.progress("cases", len(cases), len(cases), "done")
    name = "batch_summary.json" if options.shard == (1, 1) else f"batch_summary_shard-{options.shard[0]}-of-{options.shard[1]}.json"
    write_text_atomic(out / name, json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary
