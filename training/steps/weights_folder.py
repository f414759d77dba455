"""Step "export": the organ and step-4 tumour model folders copied into WEIGHTS and its
cascade.json written, with provenance (data, presets, what trained each model, git state)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from inference.core.labels import TUMOR_HOST_NAMES
from training.presets import CONTRAST_ORGANS, NetworkPreset, OPTIMIZERS
from training.recipe_settings import REAL_CT_ID, REPO_ROOT


class WeightsFolderStep:
    """Step "export" of `training.driver.Driver`."""

    def manifest_parameters(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self.params)))

    def shipped_organs(self, prefix: str) -> list[int]:
        return [o for o in self.preset.tumor_organs
                if (self.model(f"{prefix}_{TUMOR_HOST_NAMES[o]}") / "plans.json").is_file()]

    def assemble(self, dest: Path, tumor_prefix: str, provenance: dict) -> Path:
        """organ + tumor model folders copied into `dest` (stale stage folders replaced), manifest written."""
        from training.cascade_json_writer import write_cascade_json

        organs = self.shipped_organs(tumor_prefix)
        stages = {"organ": self.model("organ")}
        stages.update({f"tumor_{TUMOR_HOST_NAMES[o]}": self.model(f"{tumor_prefix}_{TUMOR_HOST_NAMES[o]}") for o in organs})
        dest.mkdir(parents=True, exist_ok=True)
        for stale in ["organ", *(f"tumor_{n}" for n in TUMOR_HOST_NAMES.values())]:
            if stale not in stages and (dest / stale).exists():
                shutil.rmtree(dest / stale)
        for name, source in stages.items():
            temporary = dest / f".{name}.partial"
            if temporary.exists():
                shutil.rmtree(temporary)
            shutil.copytree(source, temporary)
            if (dest / name).exists():
                shutil.rmtree(dest / name)
            os.replace(temporary, dest / name)
        tumor_stages = [{"organ": o, "folder": f"tumor_{TUMOR_HOST_NAMES[o]}", "needs_contrast": o in CONTRAST_ORGANS}
                        for o in organs]
        return write_cascade_json(dest, organ_folder="organ", tumor_stages=tumor_stages,
                              parameters=self.manifest_parameters(), provenance=provenance)

    def provenance(self) -> dict:
        data = self.store.load("data")["result"]
        markers = {u: self.store.load(u) for u in ("organ_labels", "tumor_crops", "pseudo_tumors", "tumor2_plan")}
        seconds = {}
        for path in sorted(self.store.folder.glob("*.json")):
            if not path.name.endswith(".started.json"):
                seconds[path.stem] = json.loads(path.read_text()).get("seconds")
        return {
            "preset": self.preset.name,
            "preset_parameters": self.preset.as_dict(),
            "training_data": {
                "source": "synthetic phantoms (phantom via training.dataset)" if data["synthetic"]
                else "user-provided FLARE23-format data",
                "folder": str(self.data), "cases_by_kind": data["counts"],
                "canonical_orientation": "training images and labels canonicalised with inference.io.orientation",
            },
            "real_ct_used": data["real_ct_used"],
            "real_ct": (f"{REAL_CT_ID} from {self.options.real_ct} (organ pseudo labels, no tumor annotation)"
                        if data["real_ct_used"] else None),
            "recipe": {
                "step1": markers["organ_labels"] and markers["organ_labels"]["result"],
                "step2_crops": markers["tumor_crops"] and markers["tumor_crops"]["result"],
                "step3_pseudo_tumors": markers["pseudo_tumors"] and markers["pseudo_tumors"]["result"],
                "step4": {"mode": "trained again from scratch with the step-2 budget and plans on real + pseudo labels",
                          "datasets": markers["tumor2_plan"] and markers["tumor2_plan"]["result"]},
                "training": {stage: training_summary(net, self.options.device) for stage, net in
                             (("organ_first", self.preset.organ_first), ("organ", self.preset.organ),
                              ("tumor", self.preset.tumor))},
            },
            "git_dirty": git_dirty(exclude=self.weights),
            "command": self.options.command,
            "device": self.options.device, "num_gpus": self.options.num_gpus,
            "unit_seconds": seconds,
        }

    def run_export(self, _resume: bool) -> dict:
        from training.precision_agreement import record_agreement

        provenance = self.provenance()
        path = self.assemble(self.weights, "tumor", provenance)
        cases = [(case_id, image) for case_id, image, _ in self.validation_cases()]
        if cases:  # what `--precision auto` reads: each model's bf16-vs-fp32 label agreement
            record_agreement(self.weights, cases, "the training's validation cases")
        manifest = json.loads(path.read_text())
        return {"manifest": str(path), "stages": manifest["stages"], "files": len(manifest["files"]),
                "provenance": provenance}


def training_summary(net: NetworkPreset, device: str) -> str:
    """One line for the manifest: what trained a model (nnU-Net's poly lr 0.9 and Dice + CE always),
    with the precision its steps computed in on this machine."""
    from training.cpu_autocast import resolve_precision

    trainer = "nnUNetTrainer" if net.augmentation else "nnUNetTrainerNoDA"
    return (f"{trainer}, {OPTIMIZERS[net.optimizer]}, lr {net.initial_lr:g} poly 0.9, Dice + CE, "
            f"{net.epochs} x {net.iterations_per_epoch} iterations, "
            f"{resolve_precision(net.cpu_precision, device)} (cpu_precision {net.cpu_precision})")


def git_dirty(exclude: Path | None = None) -> bool | None:
    """Whether tracked files differ from the commit, leaving out `exclude` (the weights folder this
    run writes: its own output is not a change of the code that made it)."""
    import subprocess

    command = ["git", "status", "--porcelain", "--untracked-files=no"]
    if exclude is not None and Path(exclude).resolve().is_relative_to(REPO_ROOT.resolve()):
        command += ["--", ".", f":(exclude){Path(exclude).resolve().relative_to(REPO_ROOT.resolve()).as_posix()}"]
    try:
        out = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return bool(out.strip())
