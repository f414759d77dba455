"""Write `weights/cascade.json`: the stages, their parameters, provenance and the SHA-256 of every file.

The format is defined by `inference.cascade.cascade_json` (which reads and verifies it); this module only
produces it, so the inference runtime never depends on training code.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from inference.io.images import write_text_atomic
from inference.cascade.cascade_json import MANIFEST_FORMAT, MANIFEST_NAME, file_digests, load_manifest
from inference.engine.precision import AGREEMENT_KEY


def git_commit(repo: Path) -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def write_cascade_json(root, *, organ_folder: str, tumor_stages: list[dict] | None = None,
                       parameters: dict | None = None, provenance: dict | None = None,
                       precision_agreement: dict | None = None) -> Path:
    """Write root/cascade.json for the model folders under `root` and verify it reads back.

    tumor_stages: [{"organ": 1, "folder": "tumor_liver", "needs_contrast": False}, ...]
    precision_agreement: each model's bf16-vs-fp32 label agreement (training.precision_agreement).
    """
    root = Path(root)
    tumor_stages = tumor_stages or []
    folders = [root / organ_folder, *(root / t["folder"] for t in tumor_stages)]
    for folder in folders:
        if not (folder / "plans.json").is_file():
            raise FileNotFoundError(f"{folder}: not an nnU-Net model folder (no plans.json)")
    manifest = {
        "format": MANIFEST_FORMAT,
        "stages": {"organ": {"folder": organ_folder}, "tumor": tumor_stages},
        "parameters": parameters or {},
        "provenance": {"git_commit": git_commit(Path(__file__).resolve().parent.parent), **(provenance or {})},
        "files": file_digests(root, folders),
    }
    if precision_agreement is not None:
        manifest[AGREEMENT_KEY] = precision_agreement
    path = root / MANIFEST_NAME
    write_text_atomic(path, json.dumps(manifest, indent=2) + "\n")
    load_manifest(root)  # what we wrote must verify
    return path
