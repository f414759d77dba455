"""A FLARE23-format synthetic dataset made from `phantom`, with its manifest.

Layout (as the FLARE 2023 release, IDs `FLARE23_0001`, ... numbered across all kinds):

    imagesTr/<ID>_0000.nii.gz   labelsTr/<ID>.nii.gz     full, partial and tumor-only cases
    unlabeledTr/<ID>_0000.nii.gz                           no labels
    imagesVal/<ID>_0000.nii.gz  labelsVal/<ID>.nii.gz    held out, fully labelled, other seeds
    dataset_manifest.json                                  every case: kind, annotated labels, phase,
                                                           tumour hosts, seed, geometry, fov, files

Kinds of labelled training case, as in FLARE23 where each source annotated what it cared about:
- full: all 13 organs and the tumour label.
- partial: a random subset of the organs (and, half of the time, the tumour label); the rest is 0.
  Where the tumour is not annotated its voxels get the organ underneath if that organ is annotated
  (organ-only datasets draw the organ outline around its lesions), else 0.
- tumor_only: only label 14 is kept.

`random_geometry` draws per case a spacing (in-plane 0.6-1.0 mm, slices 1-5 mm), a direction
(identity, diag(-1,-1,1) as NIfTI from DICOM, feet-first diag(1,1,-1)) and a scan range; the shape
comes from a physical field of view, shrunk uniformly until the case has at most `max_voxels`
voxels (the phantom scales the patient with the field of view, so the anatomy stays whole).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from inference.io.images import write_labels, write_text_atomic
from inference.core.labels import LABEL_NAMES, ORGAN_LABELS, TUMOR_LABEL
from phantom import make_phantom, write_phantom

log = logging.getLogger(__name__)

MANIFEST_NAME = "dataset_manifest.json"
KINDS = ("full", "partial", "tumor_only", "unlabeled", "validation")
DIRECTIONS = {
    "identity": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    "dicom_nifti": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
    "feet_first": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
}
_FOV_WEIGHTS = {"abdomen": 0.5, "chest-abdomen": 0.2, "abdomen-pelvis": 0.2, "full": 0.1}
_FOV_Z_MM = {"abdomen": (220, 320), "chest-abdomen": (320, 450), "abdomen-pelvis": (350, 480), "full": (500, 700)}


def random_geometry(rng: np.random.Generator, max_voxels: int) -> dict:
    """Spacing, shape, direction and fov of one case (shape from a physical FOV, capped in voxels)."""
    in_plane = float(rng.uniform(0.6, 1.0))
    slice_mm = float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0]))
    direction_name = str(rng.choice(list(DIRECTIONS)))
    fov = str(rng.choice(list(_FOV_WEIGHTS), p=list(_FOV_WEIGHTS.values())))
    field_xy = float(rng.uniform(320, 450))
    field_z = float(rng.uniform(*_FOV_Z_MM[fov]))
    shrink = min(1.0, (max_voxels / ((field_xy / in_plane) ** 2 * (field_z / slice_mm))) ** (1 / 3))
    n_xy = max(16, int(field_xy * shrink / in_plane))
    n_z = max(8, int(field_z * shrink / slice_mm))
    while n_xy * n_xy * n_z > max_voxels and n_xy > 16:  # integer rounding can overshoot slightly
        n_xy -= 1
    return {"shape": (n_z, n_xy, n_xy), "spacing": (slice_mm, in_plane, in_plane),
            "direction": DIRECTIONS[direction_name], "direction_name": direction_name, "fov": fov}


def _annotated_labels(kind: str, rng: np.random.Generator) -> tuple[int, ...]:
    if kind in ("full", "validation"):
        return ORGAN_LABELS + (TUMOR_LABEL,)
    if kind == "tumor_only":
        return (TUMOR_LABEL,)
    if kind == "partial":
        count = int(rng.integers(1, len(ORGAN_LABELS)))  # 1..12 organs: never all of them
        organs = sorted(int(o) for o in rng.choice(ORGAN_LABELS, size=count, replace=False))
        return tuple(organs) + ((TUMOR_LABEL,) if rng.random() < 0.5 else ())
    return ()


def restrict_labels(labels: np.ndarray, annotated, organs_under_tumor: np.ndarray | None = None) -> np.ndarray:
    """Keep only `annotated` labels (others become 0).

    If the tumour label is not annotated and `organs_under_tumor` (the same case without tumours) is
    given, tumour voxels take the organ underneath when that organ is annotated.
    """
    annotated = set(int(a) for a in annotated)
    keep = np.zeros(256, dtype=bool)
    keep[list(annotated)] = True
    out = np.where(keep[labels], labels, 0).astype(np.uint8)
    if TUMOR_LABEL not in annotated and organs_under_tumor is not None:
        tumor = labels == TUMOR_LABEL
        under = organs_under_tumor[tumor]
        out[tumor] = np.where(keep[under], under, 0)
    return out


def build_flare_dataset(out_dir, *, n_labeled: int, n_partial: int, n_tumor_only: int, n_unlabeled: int,
                        n_validation: int, seed: int = 0, shape=(64, 128, 128), spacing=(2.5, 1.6, 1.6),
                        random_geometry: bool = True, max_voxels: int = 2_000_000,
                        tumor_probability: float = 0.7, kinds: Sequence[str] = KINDS) -> dict:
    """Write a FLARE23-style synthetic dataset under `out_dir` and return its manifest.

    Without `random_geometry` every case uses `shape`/`spacing`, identity direction, fov "abdomen".
    Case seeds are drawn from `seed` without repeats, so validation cases never share a training seed.
    `kinds`: write only the cases of these kinds (ids and seeds stay those of the whole dataset, so
    the held-out cases of a training's data can be written again alone).
    """
    counts = {"full": n_labeled, "partial": n_partial, "tumor_only": n_tumor_only, "unlabeled": n_unlabeled,
              "validation": n_validation}
    for kind, count in counts.items():
        if int(count) != count or count < 0:
            raise ValueError(f"number of {kind} cases must be a non-negative integer, got {count!r}")
    if max_voxels < 16 * 16 * 8:
        raise ValueError(f"max_voxels must be at least {16 * 16 * 8}, got {max_voxels}")
    out_dir = Path(out_dir)
    folders = {name: out_dir / name for name in ("imagesTr", "labelsTr", "unlabeledTr", "imagesVal", "labelsVal")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 23]))
    total = sum(counts.values())
    case_seeds = rng.choice(2**31 - 1, size=total, replace=False) if total else np.array([], dtype=np.int64)
    cases, number = [], 0
    for kind in KINDS:
        for _ in range(counts[kind]):
            case_seed = int(case_seeds[number])
            number += 1
            if kind not in kinds:
                continue
            case_rng = np.random.default_rng(np.random.SeedSequence([case_seed, 7]))
            cases.append(_write_case(folders, f"FLARE23_{number:04d}", kind, case_seed, case_rng,
                                     random_geometry, shape, spacing, max_voxels, tumor_probability))
            log.info("%s %s written", cases[-1]["id"], kind)
    manifest = {
        "format": "flare23-synthetic-1",
        "generator": "phantom.make_phantom",
        "seed": int(seed),
        "labels": {"0": "background", **{str(k): v for k, v in LABEL_NAMES.items()}},
        "counts": counts,
        "random_geometry": bool(random_geometry),
        "max_voxels": int(max_voxels),
        "cases": cases,
    }
    write_text_atomic(out_dir / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    return manifest


def _write_case(folders, case_id, kind, case_seed, case_rng, use_random_geometry, shape, spacing, max_voxels,
                tumor_probability) -> dict:
    if use_random_geometry:
        geometry = random_geometry(case_rng, max_voxels)
    else:
        geometry = {"shape": tuple(shape), "spacing": tuple(spacing), "direction": DIRECTIONS["identity"],
                    "direction_name": "identity", "fov": "abdomen"}
    annotated = _annotated_labels(kind, case_rng)
    options = dict(shape=geometry["shape"], spacing=geometry["spacing"], direction=geometry["direction"],
                   fov=geometry["fov"], tumor_probability=tumor_probability)
    phantom = make_phantom(case_seed, **options)
    image_folder = {"validation": "imagesVal", "unlabeled": "unlabeledTr"}.get(kind, "imagesTr")
    image_path = folders[image_folder] / f"{case_id}_0000.nii.gz"
    write_phantom(phantom, image_path)
    label_path = None
    present = sorted(int(v) for v in np.unique(phantom.labels))
    if kind != "unlabeled":
        labels = phantom.labels
        if kind in ("partial", "tumor_only"):
            under = None
            if TUMOR_LABEL not in annotated and phantom.tumor_hosts:
                under = make_phantom(case_seed, tumors=False, phase=phantom.phase, **options).labels
            labels = restrict_labels(labels, annotated, under)
        label_path = folders["labelsVal" if kind == "validation" else "labelsTr"] / f"{case_id}.nii.gz"
        write_labels(label_path, labels, phantom.geometry)
        present = sorted(int(v) for v in np.unique(labels))
    root = folders["imagesTr"].parent
    return {
        "id": case_id,
        "kind": kind,
        "split": "validation" if kind == "validation" else "train",
        "image": image_path.relative_to(root).as_posix(),
        "label": label_path.relative_to(root).as_posix() if label_path else None,
        "annotated_labels": list(annotated),
        "labels_present": [v for v in present if v != 0] if label_path else [],
        "phase": phantom.phase,
        "tumor_hosts": list(phantom.tumor_hosts),
        "seed": case_seed,
        "shape": list(phantom.geometry.shape),
        "spacing": list(phantom.geometry.spacing),
        "origin": list(phantom.geometry.origin),
        "direction": list(phantom.geometry.direction),
        "direction_name": geometry["direction_name"],
        "fov": geometry["fov"],
    }


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.dataset",
                                     description="Write a synthetic FLARE23-format dataset.")
    parser.add_argument("out_dir")
    parser.add_argument("--n-labeled", type=_non_negative, default=10, help="fully labelled training cases")
    parser.add_argument("--n-partial", type=_non_negative, default=0, help="partially labelled training cases")
    parser.add_argument("--n-tumor-only", type=_non_negative, default=0, help="tumour-only labelled cases")
    parser.add_argument("--n-unlabeled", type=_non_negative, default=0, help="unlabelled training cases")
    parser.add_argument("--n-validation", type=_non_negative, default=0, help="held-out labelled cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fixed-geometry", action="store_true",
                        help="every case on --shape/--spacing, identity direction, abdomen fov")
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 128, 128), metavar=("Z", "Y", "X"))
    parser.add_argument("--spacing", type=float, nargs=3, default=(2.5, 1.6, 1.6), metavar=("Z", "Y", "X"))
    parser.add_argument("--max-voxels", type=int, default=2_000_000)
    parser.add_argument("--tumor-probability", type=float, default=0.7)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = build_flare_dataset(
        args.out_dir, n_labeled=args.n_labeled, n_partial=args.n_partial, n_tumor_only=args.n_tumor_only,
        n_unlabeled=args.n_unlabeled, n_validation=args.n_validation, seed=args.seed, shape=tuple(args.shape),
        spacing=tuple(args.spacing), random_geometry=not args.fixed_geometry, max_voxels=args.max_voxels,
        tumor_probability=args.tumor_probability)
    log.info("%d cases in %s", len(manifest["cases"]), args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
