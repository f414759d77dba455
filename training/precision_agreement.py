"""bf16-vs-fp32 label agreement of each model of a cascade, recorded in its cascade.json.

    python -m training.precision_agreement --weights weights --cases DIR [--held-out-of demo]

`--precision auto` (inference.precision) runs a cascade's model in bf16 on CPUs with bf16 units
only where this record says its bf16 labels agreed with its fp32 labels at >= 0.99 on the
validation cases. Each model is measured alone, the others in fp32 (all on the CPU, canonical
orientation, the CLI's default resampling):

- the organ model: its labels 1-13 in bf16 against fp32 on each whole case;
- a tumor model: the cascade's label 14 with that model in bf16 against all-fp32, the organ
  labels (fp32) fixed, so its crops are the same in both runs.

Agreement: per label, Dice pooled over all cases (twice the shared voxels over the voxels of both
maps), then the mean over the labels present in either map (1.0 where neither has any); beside it
the fraction of voxels with equal labels. The training's export step calls `record_agreement`;
this command updates an existing weights folder (`--held-out-of demo` first writes the held-out
validation phantoms of that preset's synthetic data to DIR). Only cascade.json changes: the
SHA-256 of every model file it lists stays valid, and so does its provenance.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from inference.core.labels import ORGAN_LABELS, TUMOR_LABEL

log = logging.getLogger(__name__)


class PooledAgreement:
    """Label agreement of two label maps accumulated over cases."""

    def __init__(self, labels: Sequence[int]):
        self.labels = tuple(labels)
        self.shared = dict.fromkeys(self.labels, 0)
        self.total = dict.fromkeys(self.labels, 0)
        self.equal_voxels = self.voxels = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        for label in self.labels:
            in_a, in_b = a == label, b == label
            self.shared[label] += int(np.count_nonzero(in_a & in_b))
            self.total[label] += int(np.count_nonzero(in_a)) + int(np.count_nonzero(in_b))
        self.equal_voxels += int(np.count_nonzero(a == b))
        self.voxels += a.size

    def summary(self) -> dict:
        dice = {label: 2 * self.shared[label] / self.total[label] for label in self.labels if self.total[label]}
        return {"bf16_vs_fp32_mean_dice": round(float(np.mean(list(dice.values()))), 4) if dice else 1.0,
                "bf16_vs_fp32_voxel_agreement": round(self.equal_voxels / max(1, self.voxels), 6),
                "dice_per_label": {str(k): round(v, 4) for k, v in dice.items()}}


def stage_agreements(weights: Path, cases: Sequence[tuple[str, Path]]) -> dict[str, dict]:
    """{stage folder as cascade.json names it: agreement summary} over `cases` ((id, image path))."""
    from inference.io.images import read_ct
    from inference.cascade.cascade_json import load_manifest

    manifest = load_manifest(weights)
    stages = CascadeInTwoPrecisions(manifest)
    pooled = {stages.name(manifest.organ_folder): PooledAgreement(ORGAN_LABELS),
              **{stages.name(s.folder): PooledAgreement((TUMOR_LABEL,)) for s in manifest.tumor_stages}}
    for case_id, image in cases:
        volume, geometry = read_ct(image)
        organ_fp32, organ_bf16, reference, with_bf16_tumor = stages.run_case(volume, geometry)
        pooled[stages.name(manifest.organ_folder)].add(organ_fp32, organ_bf16)
        for stage in manifest.tumor_stages:
            pooled[stages.name(stage.folder)].add(reference, with_bf16_tumor[stage.organ])
        log.info("%s: bf16-vs-fp32 agreement so far %s", case_id,
                 {k: v.summary()["bf16_vs_fp32_mean_dice"] for k, v in pooled.items()})
    return {k: {**v.summary(), "cases": len(cases)} for k, v in pooled.items()}


class CascadeInTwoPrecisions:
    """A cascade's models loaded in fp32 and in bf16 on the CPU, run so that each model's bf16
    labels can be set against fp32 with everything else fixed (fp32 outputs computed once per case)."""

    def __init__(self, manifest):
        import torch

        from inference.core.choices import DEFAULT_RESAMPLING
        from inference.engine.runner import EngineOptions, ModelRunner
        from inference.engine.model import load_model

        def runner(folder: Path, precision: str):
            options = EngineOptions(device=torch.device("cpu"), precision=precision, resampling=DEFAULT_RESAMPLING)
            return functools.partial(ModelRunner(load_model(folder), options).segment, clamp_hu=True)

        self.manifest = manifest
        self.organ = {p: runner(manifest.organ_folder, p) for p in ("fp32", "bf16")}
        self.tumor = {s.organ: {p: runner(s.folder, p) for p in ("fp32", "bf16")} for s in manifest.tumor_stages}

    def name(self, folder: Path) -> str:
        return folder.relative_to(self.manifest.root).as_posix()

    def run_case(self, volume, geometry):
        """(organ labels fp32, organ labels bf16, cascade labels all fp32, {host organ: cascade labels
        with that host's tumor model in bf16}); the organ stage is the fp32 one in every cascade run."""
        from inference.cascade.segmenter import CascadeSegmenter
        from inference.app.pipeline import segment_canonical

        organ, fp32_tumor = {}, {}

        def organ_stage(view, spacing, timings):
            for precision, fn in self.organ.items():
                if precision not in organ:
                    organ[precision] = fn(view, spacing, timings)
            return organ["fp32"]

        def tumor_stage(host: int, precision: str):
            if precision == "bf16":
                return self.tumor[host]["bf16"]

            def fp32_once(crop, spacing, timings):  # the same crop in every run: the organ labels are fixed
                if host not in fp32_tumor:
                    fp32_tumor[host] = self.tumor[host]["fp32"](crop, spacing, timings)
                return fp32_tumor[host]
            return fp32_once

        def cascade(bf16_host: int | None) -> np.ndarray:
            fns = {host: tumor_stage(host, "bf16" if host == bf16_host else "fp32") for host in self.tumor}
            segmenter = CascadeSegmenter(self.manifest, organ_stage=organ_stage, tumor_stage_fns=fns)
            return segment_canonical(segmenter, volume, geometry, {})

        reference = cascade(None)
        with_bf16 = {host: cascade(host) for host in self.tumor}
        return organ["fp32"], organ["bf16"], reference, with_bf16


def record_agreement(weights: Path, cases: Sequence[tuple[str, Path]], description: str) -> dict:
    """Measure every model's agreement on `cases` and write it into weights/cascade.json."""
    from inference.io.images import write_text_atomic
    from inference.cascade.cascade_json import MANIFEST_NAME, load_manifest
    from inference.engine.precision import AGREEMENT_FLOOR, AGREEMENT_KEY

    models = stage_agreements(weights, cases)
    record = {"description": description, "floor": AGREEMENT_FLOOR, "case_ids": [c[0] for c in cases],
              "models": models}
    path = Path(weights) / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest[AGREEMENT_KEY] = record
    write_text_atomic(path, json.dumps(manifest, indent=2) + "\n")
    load_manifest(weights)  # what we wrote must verify
    return record


def held_out_cases(folder: Path, preset_name: str) -> list[tuple[str, Path]]:
    """The validation phantoms of `preset_name`'s synthetic data (same seeds and ids as in training),
    written to folder/imagesVal (kept if already there)."""
    from training.dataset import build_flare_dataset
    from training.presets import get_preset

    spec = get_preset(preset_name).data
    if spec is None:
        raise ValueError(f"preset {preset_name!r} has no synthetic data")
    images = sorted((folder / "imagesVal").glob("*_0000.nii.gz"))
    if len(images) != spec.n_validation:
        build_flare_dataset(folder, **spec.builder_kwargs(), kinds=("validation",))
        images = sorted((folder / "imagesVal").glob("*_0000.nii.gz"))
    return [(p.name.removesuffix("_0000.nii.gz"), p) for p in images]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="cascade folder (cascade.json)")
    parser.add_argument("--cases", type=Path, required=True, help="folder whose imagesVal/ holds <ID>_0000.nii.gz")
    parser.add_argument("--held-out-of", metavar="PRESET", default=None,
                        help="first write that preset's held-out validation phantoms to --cases")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.held_out_of:
        cases = held_out_cases(args.cases, args.held_out_of)
        description = f"held-out validation phantoms of the {args.held_out_of} preset's synthetic data"
    else:
        cases = [(p.name.removesuffix("_0000.nii.gz"), p) for p in sorted((args.cases / "imagesVal").glob("*_0000.nii.gz"))]
        description = f"validation cases of {args.cases}"
    if not cases:
        print(f"error: {args.cases}/imagesVal: no <ID>_0000.nii.gz cases", file=sys.stderr)
        return 2
    record = record_agreement(args.weights, cases, description)
    print(json.dumps({k: v["bf16_vs_fp32_mean_dice"] for k, v in record["models"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
