"""Check a container run: one <ID>.nii.gz per input, nothing else, each with the input's exact geometry
and, with --owner, owned by UID:GID with mode 0644 (the outputs folder's owner, as predict.sh promises).

    python docker/check_outputs.py INPUT_DIR OUTPUT_DIR [--owner UID:GID]     (exit 1 on any mismatch)
"""
from __future__ import annotations

import argparse
import stat
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def ownership_problems(path: Path, owner: str) -> list[str]:
    status = path.stat()
    found = f"{status.st_uid}:{status.st_gid} mode {stat.S_IMODE(status.st_mode):04o}"
    return [] if found == f"{owner} mode 0644" else [f"{path.name}: owner {found}, expected {owner} mode 0644"]


def main(inputs: Path, outputs: Path, owner: str | None = None) -> int:
    problems = []
    expected = {p.name.replace("_0000.nii.gz", ".nii.gz"): p for p in sorted(inputs.glob("*_0000.nii.gz"))}
    found = sorted(p.name for p in outputs.iterdir())
    if found != sorted(expected):
        problems.append(f"outputs folder holds {found}, expected exactly {sorted(expected)}")
    for name, source in expected.items():
        target = outputs / name
        if not target.is_file():
            continue
        image, labels = sitk.ReadImage(str(source)), sitk.ReadImage(str(target))
        for what in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            a, b = getattr(image, what)(), getattr(labels, what)()
            if not np.allclose(a, b, atol=1e-5):
                problems.append(f"{name}: {what[3:].lower()} {b} differs from the input's {a}")
        values = np.unique(sitk.GetArrayViewFromImage(labels))
        if labels.GetPixelID() != sitk.sitkUInt8 or values.max(initial=0) > 14:
            problems.append(f"{name}: {labels.GetPixelIDTypeAsString()} labels {values.tolist()}, expected uint8 0..14")
        if owner:
            problems += ownership_problems(target, owner)
        print(f"{name}: size {labels.GetSize()}, labels {values.tolist()}")
    for problem in problems:
        print("PROBLEM:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", type=Path)
    parser.add_argument("outputs", type=Path)
    parser.add_argument("--owner", metavar="UID:GID", help="expected owner of every output (mode 0644)")
    arguments = parser.parse_args()
    sys.exit(main(arguments.inputs, arguments.outputs, arguments.owner))
