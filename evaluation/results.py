"""Scores of many cases -> long-form `metrics.csv` and aggregated `summary.json`."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from evaluation.metrics import LabelScore
from inference.core.labels import LABEL_NAMES, ORGAN_LABELS, TUMOR_LABEL
from inference.io.images import write_text_atomic

METRICS_COLUMNS = ("case", "label", "dsc", "nsd")


def metrics_rows(scores: Mapping[str, Sequence[LabelScore]]) -> list[dict]:
    return [{"case": case_id, "label": score.label, "dsc": score.dsc, "nsd": score.nsd}
            for case_id, case_scores in scores.items() for score in case_scores]


def write_metrics_csv(path, scores: Mapping[str, Sequence[LabelScore]]) -> None:
    """One row per case and label; full float precision (rounding is for display only)."""
    write_csv(path, METRICS_COLUMNS, metrics_rows(scores))


def write_csv(path, columns: Sequence[str], rows: Sequence[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(Path(path), buffer.getvalue())


def summarize(scores: Mapping[str, Sequence[LabelScore]]) -> dict:
    """Mean and population std (ddof=0) per label, the organ mean and the tumor on its own.

    The organ mean is the mean of the 13 organ labels' means, as the organisers aggregate; labels
    missing from the scores are left out of it (and reported as absent).
    """
    values: dict[int, dict[str, list[float]]] = {}
    for case_scores in scores.values():
        for score in case_scores:
            entry = values.setdefault(score.label, {"dsc": [], "nsd": []})
            entry["dsc"].append(score.dsc)
            entry["nsd"].append(score.nsd)
    per_label = {}
    for label in sorted(values):
        dsc, nsd = np.asarray(values[label]["dsc"]), np.asarray(values[label]["nsd"])
        per_label[str(label)] = {
            "name": LABEL_NAMES.get(label, f"label_{label}"),
            "cases": int(dsc.size),
            "dsc_mean": float(dsc.mean()), "dsc_std": float(dsc.std()),
            "nsd_mean": float(nsd.mean()), "nsd_std": float(nsd.std()),
        }
    organ_entries = [per_label[str(label)] for label in ORGAN_LABELS if str(label) in per_label]
    return {
        "cases": len(scores),
        "labels": per_label,
        "organ_mean": {
            "labels": [label for label in ORGAN_LABELS if str(label) in per_label],
            "dsc": _mean([entry["dsc_mean"] for entry in organ_entries]),
            "nsd": _mean([entry["nsd_mean"] for entry in organ_entries]),
        },
        "tumor": ({"dsc": per_label[str(TUMOR_LABEL)]["dsc_mean"], "nsd": per_label[str(TUMOR_LABEL)]["nsd_mean"]}
                  if str(TUMOR_LABEL) in per_label else None),
    }


def write_summary_json(path, summary: dict) -> None:
    write_text_atomic(Path(path), json.dumps(summary, indent=2) + "\n")


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None
