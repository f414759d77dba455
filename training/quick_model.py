"""A briefly trained organ model on synthetic phantoms: stop-gap default weights and benchmark model.

    nice -n 5 python -m training.quick_model --out weights/organ --work out/quick_model --cases 20 --epochs 16 --iterations 10

Steps (each one skipped when its output already exists, so an interrupted run resumes with
`--resume`): phantom cases -> nnU-Net raw dataset -> nnU-Net fingerprint/plan/preprocess with a
small FLARE-like organ plan -> nnU-Net training -> export of a stripped model folder -> nnU-Net's
own predictor on held-out phantoms -> per-organ Dice in `<work>/report.json`.

The organ model has 14 outputs (background + 13 FLARE organs): tumour voxels (label 14) are given
to the organ they sit in (nearest organ voxel), as in an organ-only label map.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.core.labels import ORGAN_MODEL_LABELS, TUMOR_LABEL
from training.nnunet import (
    NnUNetPaths, find_dataset_folder, fold_folder, plan_and_preprocess, predict_with_nnunet, train, write_raw_dataset,
)
from training.nnunet_export import export_model_folder

log = logging.getLogger("training.quick_model")

DATASET_ID = 201
DATASET_NAME = "QuickOrgans"
PLANS_NAME = "QuickOrganPlans"
CONFIGURATION = "3d_fullres"


@dataclass(frozen=True)
class OrganPlan:
    """A FLARE-like organ configuration, scaled down to train on a CPU."""
    spacing: tuple[float, float, float] = (2.5, 1.6, 1.6)
    patch_size: tuple[int, int, int] = (64, 128, 128)
    batch_size: int = 2
    features_per_stage: tuple[int, ...] = (8, 16, 32, 64, 128)  # 1.4 M parameters, 5.7 MB in fp32


@dataclass(frozen=True)
class CaseSpec:
    case_id: str
    seed: int
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    phase: str | None
    fov: str


def case_specs(count: int, *, first_seed: int, prefix: str) -> list[CaseSpec]:
    """Varied phantoms: every phase and field of view, in-plane FOVs from 307 mm (a shrunken patient)
    to 410 mm (adult size), mostly at the model spacing so that nnU-Net's resampling costs little."""
    from phantom import FOVS, PHASES

    shapes = [(96, 192, 192), (96, 256, 256), (112, 224, 224), (80, 240, 240), (128, 208, 208)]
    spacings = [(2.5, 1.6, 1.6), (2.5, 1.6, 1.6), (2.5, 1.6, 1.6), (3.0, 1.5, 1.5), (2.0, 1.8, 1.8)]
    return [CaseSpec(case_id=f"{prefix}{i:03d}", seed=first_seed + i, shape=shapes[i % len(shapes)],
                     spacing=spacings[(i // len(shapes) + i) % len(spacings)], phase=PHASES[i % len(PHASES)],
                     fov=FOVS[i % len(FOVS)])
            for i in range(count)]


def organ_labels(labels: np.ndarray, hosts: tuple[int, ...] = ()) -> np.ndarray:
    """Labels 0..13: each tumour component is given to its host organ.

    The host is the organ among `hosts` (the phantom's tumour hosts; any organ if empty or none
    touches) that has the most voxels on the component's one-voxel outer shell. Nearest-voxel
    assignment would give a pancreatic tumour's rim to the duodenum or the IVC it touches.
    """
    from scipy import ndimage

    out = labels.astype(np.uint8, copy=True)
    components, count = ndimage.label(labels == TUMOR_LABEL)
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        component = components[box] == index
        shell = ndimage.binary_dilation(component) & ~component
        around = labels[box][shell]
        around = around[(around > 0) & (around != TUMOR_LABEL)]
        candidates = around[np.isin(around, hosts)] if hosts else around
        if candidates.size == 0:
            candidates = around
        host = int(np.bincount(candidates).argmax()) if candidates.size else 0
        out[box][component] = host
    return out


def write_case(spec: CaseSpec, folder: Path) -> tuple[Path, Path]:
    """Write the phantom's CT and its organ-only labels (NIfTI, the phantom's geometry)."""
    from inference.io.images import write_labels
    from phantom import make_phantom, write_phantom

    image_path, label_path = folder / f"{spec.case_id}_0000.nii.gz", folder / f"{spec.case_id}.nii.gz"
    if image_path.exists() and label_path.exists():
        return image_path, label_path
    phantom = make_phantom(spec.seed, shape=spec.shape, spacing=spec.spacing, phase=spec.phase, tumors=True,
                           fov=spec.fov)
    write_phantom(phantom, image_path)
    write_labels(label_path, organ_labels(np.asarray(phantom.labels), tuple(phantom.tumor_hosts)),
                 phantom.geometry)
    return image_path, label_path


def dice_per_organ(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """DSC per organ; both empty counts as 1 (the organisers' rule)."""
    scores = {}
    for name, value in ORGAN_MODEL_LABELS.items():
        if value == 0:
            continue
        t, p = truth == value, prediction == value
        total = int(t.sum()) + int(p.sum())
        scores[name] = 1.0 if total == 0 else 2.0 * int((t & p).sum()) / total
    return scores


def evaluate(model_folder: Path, cases: list[tuple[str, Path, Path]], work: Path, paths: NnUNetPaths) -> dict:
    import SimpleITK as sitk

    inputs, outputs = work / "heldout_in", work / "heldout_pred"
    inputs.mkdir(parents=True, exist_ok=True)
    for case_id, image_path, _ in cases:
        target = inputs / f"{case_id}_0000.nii.gz"
        if not target.exists():
            target.hardlink_to(image_path)
    start = time.perf_counter()
    predict_with_nnunet(model_folder, inputs, outputs, env=paths.env(threads=2), log_path=paths.logs / "heldout_predict.log")
    seconds = time.perf_counter() - start
    per_case = {}
    for case_id, _, label_path in cases:
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs / f"{case_id}.nii.gz")))
        per_case[case_id] = dice_per_organ(truth, predicted)
    mean = {name: float(np.mean([scores[name] for scores in per_case.values()])) for name in ORGAN_MODEL_LABELS if name != "background"}
    return {"per_case": per_case, "mean_per_organ": mean, "mean_organ_dice": float(np.mean(list(mean.values()))),
            "nnunet_predict_seconds": round(seconds, 1)}


def _plans_match(paths: NnUNetPaths, plan: OrganPlan) -> bool:
    """True if this work folder already holds preprocessed data for exactly `plan`."""
    try:
        plans_path = find_dataset_folder(paths.preprocessed, DATASET_ID) / f"{PLANS_NAME}.json"
    except FileNotFoundError:
        return False
    if not plans_path.exists():
        return False
    config = json.loads(plans_path.read_text())["configurations"][CONFIGURATION]
    return (config["spacing"] == list(plan.spacing) and config["patch_size"] == list(plan.patch_size)
            and config["batch_size"] == plan.batch_size
            and config["architecture"]["arch_kwargs"]["features_per_stage"] == list(plan.features_per_stage))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("weights/organ"), help="exported model folder")
    parser.add_argument("--work", type=Path, required=True, help="working folder (cases, nnU-Net folders, logs)")
    parser.add_argument("--cases", type=int, default=16, help="training phantoms")
    parser.add_argument("--heldout", type=int, default=2, help="held-out phantoms for the Dice report")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=12, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=2)
    parser.add_argument("--initial-lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nice", type=int, default=0, help="niceness added to the training process")
    parser.add_argument("--save-every", type=int, default=2, help="checkpoint_latest.pth every N epochs")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted training")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    default = OrganPlan()
    parser.add_argument("--spacing", type=float, nargs=3, default=default.spacing, metavar=("Z", "Y", "X"))
    parser.add_argument("--patch", type=int, nargs=3, default=default.patch_size, metavar=("Z", "Y", "X"))
    parser.add_argument("--batch-size", type=int, default=default.batch_size)
    parser.add_argument("--features", type=int, nargs="+", default=default.features_per_stage,
                        help="features per encoder stage (the number of stages is their count)")
    args = parser.parse_args(argv)
    if min(args.cases, args.epochs, args.iterations, args.heldout) < 1:
        parser.error("--cases, --heldout, --epochs and --iterations must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    plan = OrganPlan(spacing=tuple(args.spacing), patch_size=tuple(args.patch), batch_size=args.batch_size,
                     features_per_stage=tuple(args.features))
    work = args.work.resolve()
    paths = NnUNetPaths(work / "nnunet")
    case_folder = work / "cases"
    case_folder.mkdir(parents=True, exist_ok=True)
    timings = {}

    start = time.perf_counter()
    training_cases = [(s.case_id, *write_case(s, case_folder))
                      for s in case_specs(args.cases, first_seed=1000, prefix="quick")]
    heldout_cases = [(s.case_id, *write_case(s, case_folder))
                     for s in case_specs(args.heldout, first_seed=9000, prefix="heldout")]
    timings["phantoms_s"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    if not _plans_match(paths, plan):
        write_raw_dataset(paths, DATASET_ID, DATASET_NAME, training_cases, ORGAN_MODEL_LABELS)
        plan_and_preprocess(paths, DATASET_ID, plans_name=PLANS_NAME, configuration=CONFIGURATION,
                            spacing=plan.spacing, patch_size=plan.patch_size, batch_size=plan.batch_size,
                            features_per_stage=plan.features_per_stage, num_processes=2)
    timings["plan_preprocess_s"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    train(paths, DATASET_ID, plans_name=PLANS_NAME, configuration=CONFIGURATION, fold="all", epochs=args.epochs,
          iterations_per_epoch=args.iterations, val_iterations=args.val_iterations, initial_lr=args.initial_lr,
          device=args.device, continue_training=args.resume, threads=args.threads, nice=args.nice,
          save_every=args.save_every)
    timings["train_s"] = round(time.perf_counter() - start, 1)

    hashes = export_model_folder(paths, DATASET_ID, plans_name=PLANS_NAME, configuration=CONFIGURATION,
                                 fold="all", dest=args.out)
    scores = evaluate(args.out, heldout_cases, work, paths)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    report = {
        "command": "python -m training.quick_model " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "training_cases": [c[0] for c in training_cases], "heldout_cases": [c[0] for c in heldout_cases],
        "case_specs": [s.__dict__ for s in case_specs(args.cases, first_seed=1000, prefix="quick")],
        "epochs": args.epochs, "iterations_per_epoch": args.iterations, "val_iterations": args.val_iterations,
        "initial_lr": args.initial_lr, "plan": plan.__dict__, "timings": timings,
        "training_log": str(fold_folder(paths, DATASET_ID, plans_name=PLANS_NAME, configuration=CONFIGURATION, fold="all")),
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, {args.device}",
        "exported_bytes": size, "sha256": hashes, "heldout": scores,
    }
    (work / "report.json").write_text(json.dumps(report, indent=2))
    log.info("mean organ Dice on held-out phantoms: %.3f", scores["mean_organ_dice"])
    return report


if __name__ == "__main__":
    main()
