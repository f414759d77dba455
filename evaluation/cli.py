"""`python -m evaluation --pred PRED_DIR --gt GT_DIR --out OUT_DIR`: folder-vs-folder DSC/NSD.

Predictions are paired with ground truths by case ID (`<ID>.nii.gz` or `<ID>_0000.nii.gz`). Every
pair is checked before any scoring: a missing prediction or a shape mismatch stops the run with
exit code 1 and a message naming the case(s), like the organisers' scorer (which stops too).
Outputs: `metrics.csv` (case, label, dsc, nsd) and `summary.json` in OUT_DIR; with `--lesions` also
`lesions.csv` (every true and false tumour component: host organ, volume, share found) and a
"lesions" section in summary.json (detections by host organ and size, false lesions by location;
see evaluation/lesions.py).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from evaluation.lesions import LESION_COLUMNS, case_lesions, lesion_rows, summarize_lesions
from evaluation.metrics import NSD_MIN_DSC, evaluate_case
from evaluation.results import summarize, write_csv, write_metrics_csv, write_summary_json
from inference.io.images import Case, InputError, discover_cases, read_image
from inference.core.labels import LABEL_NAMES

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
SPACING_TOLERANCE_MM = 1e-3


class EvaluationError(Exception):
    """A problem with the inputs that makes the scores meaningless; the message names the cases."""


def pair_cases(pred_dir: Path, gt_dir: Path) -> list[tuple[str, Path, Path]]:
    """(case ID, prediction, ground truth) for every ground-truth case, sorted by ID."""
    gt_cases, pred_cases = _cases_by_id(gt_dir, "ground truth"), _cases_by_id(pred_dir, "prediction")
    if not gt_cases:
        raise EvaluationError(f"{gt_dir}: no ground-truth cases found")
    missing = sorted(set(gt_cases) - set(pred_cases))
    if missing:
        raise EvaluationError(f"missing prediction for {len(missing)} case(s): {', '.join(missing)} "
                              f"(expected e.g. {pred_dir / (missing[0] + '.nii.gz')})")
    extra = sorted(set(pred_cases) - set(gt_cases))
    if extra:
        log.warning("%d prediction(s) without ground truth ignored: %s", len(extra), ", ".join(extra))
    return [(case_id, pred_cases[case_id].path, gt_cases[case_id].path) for case_id in sorted(gt_cases)]


def _cases_by_id(folder: Path, role: str) -> dict[str, Case]:
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: {role} folder does not exist")
    cases: dict[str, Case] = {}
    for case in discover_cases(folder):
        if case.case_id in cases:
            raise EvaluationError(f"case {case.case_id}: two {role} files ({cases[case.case_id].path.name}, "
                                  f"{case.path.name})")
        cases[case.case_id] = case
    return cases


def check_shapes(pairs: list[tuple[str, Path, Path]]) -> None:
    """Compare image sizes from the file headers, so a mismatch fails before hours of scoring."""
    mismatched = []
    for case_id, pred_path, gt_path in pairs:
        pred_shape, gt_shape = _header_shape(pred_path), _header_shape(gt_path)
        if pred_shape is not None and gt_shape is not None and pred_shape != gt_shape:
            mismatched.append(f"{case_id} (prediction {pred_shape}, ground truth {gt_shape})")
    if mismatched:
        raise EvaluationError(f"shape mismatch (z, y, x) for {len(mismatched)} case(s): {'; '.join(mismatched)}")


def _header_shape(path: Path) -> tuple[int, ...] | None:
    """Shape (z, y, x) from the header alone; None where the header cannot be read (the full read
    later reports that file's problem)."""
    if path.is_dir():
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return tuple(reversed(reader.GetSize()))


def read_labels(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A label map as uint8 (z, y, x) and its spacing; non-integer or out-of-range values fail."""
    array, geometry = read_image(path)
    labels = np.rint(array)
    if not np.array_equal(labels, array):
        raise InputError(path, "label map holds non-integer values")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise InputError(path, f"label values {labels.min():g}..{labels.max():g} outside 0..255")
    return labels.astype(np.uint8), geometry.spacing


def evaluate_folders(pred_dir, gt_dir, out_dir, *, nsd_min_dsc: float = NSD_MIN_DSC,
                     inclusive_z_range: bool = False, lesions: bool = False, progress: bool = False) -> dict:
    """Score every case, write metrics.csv and summary.json (and lesions.csv with `lesions`), return
    the summary (Python API)."""
    pred_dir, gt_dir, out_dir = Path(pred_dir), Path(gt_dir), Path(out_dir)
    pairs = pair_cases(pred_dir, gt_dir)
    check_shapes(pairs)
    scores, found_lesions = {}, []
    for case_id, pred_path, gt_path in tqdm(pairs, desc="evaluating", unit="case", disable=not progress):
        started = time.perf_counter()
        try:
            gt, gt_spacing = read_labels(gt_path)
            pred, pred_spacing = read_labels(pred_path)
        except InputError as error:
            raise EvaluationError(f"case {case_id}: {error}") from None
        if gt.shape != pred.shape:
            raise EvaluationError(f"case {case_id}: shape mismatch (z, y, x): prediction {pred.shape}, "
                                  f"ground truth {gt.shape}")
        if not np.allclose(gt_spacing, pred_spacing, atol=SPACING_TOLERANCE_MM):
            log.warning("case %s: prediction spacing %s differs from ground truth %s; using the ground truth's",
                        case_id, pred_spacing, gt_spacing)
        scores[case_id] = evaluate_case(gt, pred, gt_spacing, nsd_min_dsc=nsd_min_dsc,
                                        inclusive_z_range=inclusive_z_range)
        if lesions:
            found_lesions += case_lesions(case_id, gt, pred, gt_spacing)
        log.info("case %s scored in %.2f s", case_id, time.perf_counter() - started)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics_csv(out_dir / "metrics.csv", scores)
    summary = summarize(scores)
    summary["settings"] = {"nsd_min_dsc": nsd_min_dsc, "inclusive_z_range": inclusive_z_range}
    if lesions:
        write_csv(out_dir / "lesions.csv", LESION_COLUMNS, lesion_rows(found_lesions))
        summary["lesions"] = summarize_lesions(found_lesions, LABEL_NAMES)
    write_summary_json(out_dir / "summary.json", summary)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", required=True, type=Path, help="folder of predicted label maps")
    parser.add_argument("--gt", required=True, type=Path, help="folder of ground-truth label maps")
    parser.add_argument("--out", required=True, type=Path, help="folder for metrics.csv and summary.json")
    parser.add_argument("--nsd-min-dsc", type=float, default=NSD_MIN_DSC,
                        help=f"NSD counts as 0 below this DSC (default {NSD_MIN_DSC})")
    parser.add_argument("--inclusive-z-range", action="store_true",
                        help="for aorta, IVC, esophagus keep the ground truth's last z slice "
                             "(the organisers' script drops it)")
    parser.add_argument("--lesions", action="store_true",
                        help="also write lesions.csv and a lesion-wise tumour summary (detections by host "
                             "organ and size, false lesions by location)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log per-case timings")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = evaluate_folders(args.pred, args.gt, args.out, nsd_min_dsc=args.nsd_min_dsc,
                                   inclusive_z_range=args.inclusive_z_range, lesions=args.lesions,
                                   progress=not args.no_progress and sys.stderr.isatty())
    except EvaluationError as error:
        log.error("%s", error)
        return EXIT_FAILED
    organ, tumor = summary["organ_mean"], summary["tumor"] or {"dsc": float("nan"), "nsd": float("nan")}
    # The one result line of the command goes to stdout; diagnostics go through logging (stderr).
    print(f"{summary['cases']} case(s): organ DSC {organ['dsc']:.4f} NSD {organ['nsd']:.4f}; "
          f"tumor DSC {tumor['dsc']:.4f} NSD {tumor['nsd']:.4f}; written to {args.out}")
    if args.lesions:
        table = summary["lesions"]
        hosts = ", ".join(f"{host} {c['detected']}/{c['lesions']}" for host, c in table["by_host"].items())
        print(f"tumours: {table['true']['detected']} of {table['true']['lesions']} detected ({hosts}); "
              f"{table['false']['lesions']} false lesion(s), {table['false']['volume_mm3']:g} mm3")
    return EXIT_OK
