"""Score a weights folder (a cascade or one model) on labelled cases with the organisers' rules.

The folder runs through the inference engine exactly as shipped (`build_segmenter`, canonical
orientation, cascade, post-processing); `evaluation.metrics.evaluate_case` scores each case.
Summary: mean organ DSC/NSD (mean of the 13 organs per case, then over cases), tumor DSC/NSD
over all cases (both empty = 1, the organisers' rule, so a tumor-free case without a false
positive scores 1) and over the tumor-bearing cases only, plus the lesion-wise tumour table's
summary (`evaluation.lesions`: detections by host organ and size, false lesions by location).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)



def evaluate_weights(weights: Path, cases: Sequence[tuple[str, Path, Path]], *, device: str = "cpu") -> dict:
    """cases: (case_id, image_path, label_path). Returns the summary with per-case scores."""
    import torch

    from evaluation.lesions import case_lesions, summarize_lesions
    from evaluation.metrics import evaluate_case
    from inference.engine.precision import nnunet_precision
    from inference.engine.runner import EngineOptions
    from inference.io.images import read_ct, read_image
    from inference.app.pipeline import segment_canonical
    from inference.core.labels import LABEL_NAMES, ORGAN_LABELS, TUMOR_LABEL
    from inference.app.segmenters import build_segmenter

    torch_device = torch.device(device)
    segmenter = build_segmenter(weights, EngineOptions(device=torch_device, precision=nnunet_precision(torch_device)))
    per_case, lesions = {}, []
    for case_id, image_path, label_path in cases:
        start = time.perf_counter()
        volume, geometry = read_ct(image_path)
        predicted = segment_canonical(segmenter, volume, geometry, {})
        truth = read_image(label_path)[0].astype(np.uint8)
        scores = {s.label: s for s in evaluate_case(truth, predicted, geometry.spacing)}
        found = case_lesions(case_id, truth, predicted, geometry.spacing)
        lesions += found
        per_case[case_id] = {
            "organ_dsc": {LABEL_NAMES[o]: round(scores[o].dsc, 4) for o in ORGAN_LABELS},
            "organ_nsd": {LABEL_NAMES[o]: round(scores[o].nsd, 4) for o in ORGAN_LABELS},
            "tumor_dsc": round(scores[TUMOR_LABEL].dsc, 4), "tumor_nsd": round(scores[TUMOR_LABEL].nsd, 4),
            "tumor_in_truth": bool((truth == TUMOR_LABEL).any()), "tumor_predicted": bool((predicted == TUMOR_LABEL).any()),
            "tumor_lesions": {"true": sum(l.kind == "true" for l in found), "detected": sum(l.detected for l in found),
                              "false": sum(l.kind == "false" for l in found)},
            "seconds": round(time.perf_counter() - start, 2),
        }
        log.info("%s: organ DSC %.3f, tumor DSC %.3f", case_id,
                 np.mean(list(per_case[case_id]["organ_dsc"].values())), per_case[case_id]["tumor_dsc"])
    return {**summarize(per_case), "lesions": summarize_lesions(lesions, LABEL_NAMES)}


def summarize(per_case: dict) -> dict:
    if not per_case:
        return {"cases": 0, "per_case": {}}
    cases = list(per_case.values())
    names = list(cases[0]["organ_dsc"])
    per_organ = {name: round(float(np.mean([c["organ_dsc"][name] for c in cases])), 4) for name in names}
    tumor_cases = [c for c in cases if c["tumor_in_truth"]]
    return {
        "cases": len(cases),
        "mean_organ_dsc": round(float(np.mean([np.mean(list(c["organ_dsc"].values())) for c in cases])), 4),
        "mean_organ_nsd": round(float(np.mean([np.mean(list(c["organ_nsd"].values())) for c in cases])), 4),
        "per_organ_dsc": per_organ,
        "tumor_dsc": round(float(np.mean([c["tumor_dsc"] for c in cases])), 4),
        "tumor_nsd": round(float(np.mean([c["tumor_nsd"] for c in cases])), 4),
        "tumor_cases": len(tumor_cases),
        "tumor_dsc_on_tumor_cases": (round(float(np.mean([c["tumor_dsc"] for c in tumor_cases])), 4)
                                     if tumor_cases else None),
        "false_positive_tumor_cases": sum(1 for c in cases if c["tumor_predicted"] and not c["tumor_in_truth"]),
        "seconds_per_case": round(float(np.mean([c["seconds"] for c in cases])), 2),
        "per_case": per_case,
    }
