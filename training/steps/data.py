"""Step "data": the synthetic data (--make-data), then every case canonicalised and indexed in
WORK/cases.json; the real CT joins as one pseudo-labelled case when the preset asks for it."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from inference.core.labels import ALL_LABELS, ORGAN_LABELS
from training.case_files import kind_from_annotation, canonicalise_case, CaseRecord, discover_training_cases
from training.recipe_settings import DATA_FOLDERS, DATA_STAMP, DriverError, REAL_CT_ID
from training.unit_executor import digest, remove_path

log = logging.getLogger(__name__)


class DataStep:
    """Step "data" of `training.driver.Driver`."""

    def data_params(self) -> dict:
        opts, preset, real_ct = self.options, self.preset, self.real_ct_files()
        params = {"data": str(self.data), "make": dataclasses.asdict(preset.data) if opts.make_data else None,
                  "real_ct": real_ct and [str(p) for p in real_ct]}
        if not opts.make_data:
            params["listing"] = listing_digest(self.data)
        return params

    def real_ct_files(self) -> tuple[Path, Path] | None:
        folder = self.options.real_ct
        if not self.preset.use_real_ct or folder is None:
            return None
        image, label = Path(folder) / f"{REAL_CT_ID}_0000.nii.gz", Path(folder) / "labels" / f"{REAL_CT_ID}.nii.gz"
        if not (image.is_file() and label.is_file()):
            log.warning("real CT not found in %s: training without it", folder)
            return None
        return image, label

    # ---- case index
    def cases(self) -> list[CaseRecord]:
        # canonical copies are stored relative to WORK (a copied work folder stays valid)
        return [CaseRecord(**{**c, "annotated": tuple(c["annotated"]), "image": str(self.work / c["image"]),
                              "label": c["label"] and str(self.work / c["label"])})
                for c in json.loads(self.p("cases.json").read_text())["cases"]]

    def training_cases(self) -> list[CaseRecord]:
        return [c for c in self.cases() if c.is_training]

    # ---- step "data"
    def run_data(self, _resume: bool) -> dict:
        if self.options.make_data:
            self.make_data()
        records = []
        for case in discover_training_cases(self.data):
            records.append(self.prepare(case))
        real = self.real_ct_files()
        if real is not None:
            records.append(self.prepare({"id": REAL_CT_ID, "kind": "real_pseudo", "image": real[0], "label": real[1],
                                         "annotated": ORGAN_LABELS}))
        payload = {"data": str(self.data), "real_ct_used": real is not None,
                   "cases": [dataclasses.asdict(r) for r in records]}
        self.p("cases.json").write_text(json.dumps(payload, indent=1))
        counts = {}
        for r in records:
            counts[r.kind] = counts.get(r.kind, 0) + 1
        return {"counts": counts, "real_ct_used": real is not None, "synthetic": self.options.make_data or
                (self.data / "dataset_manifest.json").is_file()}

    def make_data(self) -> None:
        from training.dataset import build_flare_dataset

        spec = self.preset.data
        if spec is None:
            raise DriverError(f"preset {self.preset.name!r} has no synthetic data sizes; pass --data with real data")
        wanted = json.loads(json.dumps(dataclasses.asdict(spec)))
        stamp = self.data / DATA_STAMP
        if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
            log.info("%s already holds the synthetic data of these parameters", self.data)
            return
        if self.data.exists() and any(self.data.iterdir()) and not stamp.is_file():
            raise DriverError(f"{self.data} is not empty and was not made by --make-data; give an empty folder")
        for name in (*DATA_FOLDERS, "dataset_manifest.json", DATA_STAMP):
            if (self.data / name).exists():
                remove_path(self.data / name)
        log.info("writing synthetic data to %s", self.data)
        build_flare_dataset(self.data, **spec.builder_kwargs())
        stamp.write_text(json.dumps(wanted, indent=1))

    def prepare(self, case: dict) -> CaseRecord:
        if case["kind"] == "validation":
            return CaseRecord(case["id"], "validation", str(case["image"]), str(case["label"]),
                              ALL_LABELS, str(case["image"]))
        image = self.p("canonical", "images", f"{case['id']}_0000.nii.gz")
        label = self.p("canonical", "labels", f"{case['id']}.nii.gz") if case["label"] else None
        labels, _ = canonicalise_case(Path(case["image"]), case["label"] and Path(case["label"]), image, label)
        annotated = case["annotated"]
        if annotated is None:
            from training.label_merging import infer_annotated
            annotated = infer_annotated(labels) if labels is not None else ()
        kind = case["kind"] if case["kind"] not in ("labelled",) else kind_from_annotation(annotated)
        return CaseRecord(case["id"], kind, str(image.relative_to(self.work)),
                          label and str(label.relative_to(self.work)), tuple(annotated), str(case["image"]))

    # ---- step 1


def listing_digest(folder: Path) -> str:
    """Names, sizes and modification times of a data folder's files: changes when the data does."""
    entries = []
    for name in (*DATA_FOLDERS, "dataset_manifest.json"):
        path = folder / name
        files = sorted(path.rglob("*")) if path.is_dir() else ([path] if path.is_file() else [])
        entries += [(str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    return digest(entries)
