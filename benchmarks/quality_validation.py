"""How often the quality check flags the shipped weights' results: held-out phantoms and the real CT.

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.quality_validation [--real ../shared/data/real/TS_example_ct_0000.nii.gz]

The held-out validation phantoms are rebuilt exactly as `make weights` drew them: the data
parameters recorded in weights/cascade.json (provenance.preset_parameters.data) go to
training.dataset.build_flare_dataset, whose imagesVal/labelsVal are the 12 validation cases (case
seeds never shared with training). Each is segmented with the shipped weights as the engine runs
them, and checked; the true label maps are checked too (they must raise nothing), and so are
adult-sized phantoms (a 410-mm field of view, where the adult volume ranges apply: seeds 0..N-1
in three fields of view). `--real` adds a real CT: its flags are printed in full.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def validation_set(folder: Path) -> list[tuple[str, Path, Path]]:
    """(case id, image, labels) of the weights' held-out validation cases, built once into `folder`."""
    from training.dataset import MANIFEST_NAME, build_flare_dataset
    if not (folder / MANIFEST_NAME).is_file():
        data = json.loads((WEIGHTS / "cascade.json").read_text())["provenance"]["preset_parameters"]["data"]
        build_flare_dataset(folder, n_labeled=data["n_labeled"], n_partial=data["n_partial"],
                            n_tumor_only=data["n_tumor_only"], n_unlabeled=data["n_unlabeled"],
                            n_validation=data["n_validation"], seed=data["seed"], shape=tuple(data["shape"]),
                            spacing=tuple(data["spacing"]), random_geometry=data["random_geometry"],
                            max_voxels=data["max_voxels"], tumor_probability=data["tumor_probability"])
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    return [(c["id"], folder / c["image"], folder / c["label"]) for c in manifest["cases"] if c["kind"] == "validation"]


def check_case(segmenter, image_path: Path, label_path: Path | None) -> dict:
    from inference.io.images import read_ct, read_image
    from inference.app.pipeline import segment_canonical
    from inference.app.quality import check_quality
    volume, geometry = read_ct(image_path)
    started = time.perf_counter()
    predicted = segment_canonical(segmenter, volume, geometry, {})
    result = {"segment_s": round(time.perf_counter() - started, 1),
              "predicted": check_quality(predicted, volume, geometry)}
    if label_path is not None:
        truth = read_image(label_path)[0].astype(np.uint8)
        result["truth"] = check_quality(truth, volume, geometry)
    return result


def adult_phantoms_flagged(count: int) -> int:
    """True label maps of adult-sized phantoms (8 seeds x 3 fields of view by default) that are flagged."""
    from inference.app.quality import check_quality
    from phantom import make_phantom
    flagged = 0
    for seed in range(count):
        for fov in ("abdomen", "abdomen-pelvis", "chest-abdomen"):
            case = make_phantom(seed, shape=(70, 128, 128), spacing=(5.0, 3.2, 3.2), fov=fov)
            flagged += check_quality(case.labels, case.image, case.geometry)["flagged"]
    return flagged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("out/quality_validation/data"))
    parser.add_argument("--real", type=Path, default=None, help="a real CT to segment and check as well")
    parser.add_argument("--adult-seeds", type=int, default=8)
    parser.add_argument("--json", type=Path, default=Path("out/quality_validation/result.json"))
    args = parser.parse_args(argv)

    from inference.engine.runner import EngineOptions
    from inference.app.segmenters import build_segmenter
    segmenter = build_segmenter(WEIGHTS, EngineOptions())
    results = {case_id: check_case(segmenter, image, labels) for case_id, image, labels in validation_set(args.data)}
    for case_id, result in results.items():
        print(case_id, "predicted:", [f["message"] for f in result["predicted"]["flags"]] or "no flag",
              "| truth:", [f["message"] for f in result["truth"]["flags"]] or "no flag")
    summary = {"validation_cases": len(results),
               "predicted_flagged": sum(r["predicted"]["flagged"] for r in results.values()),
               "truth_flagged": sum(r["truth"]["flagged"] for r in results.values()),
               "adult_phantoms": 3 * args.adult_seeds, "adult_phantoms_flagged": adult_phantoms_flagged(args.adult_seeds)}
    if args.real is not None:
        results["real"] = check_case(segmenter, args.real, None)
        print("real CT:", results["real"]["segment_s"], "s;", len(results["real"]["predicted"]["flags"]), "flags")
        for flag in results["real"]["predicted"]["flags"]:
            print("  ", flag["message"])
    print(json.dumps(summary))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"summary": summary, "cases": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
