"""Assets for docker/test_image.sh: a small random-weight cascade and a few synthetic CT cases.

    python docker/make_test_assets.py weights DIR      cascade.json + organ model (random weights)
    python docker/make_test_assets.py cases DIR N      N phantoms DIR/<ID>_0000.nii.gz, mixed orientations

The cascade is for exercising the container (loading, SHA-256 checks, I/O, timing of start-up),
not for accuracy: its labels are noise.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# (shape zyx, spacing zyx, direction) per case: the FLARE storage, an identity-direction NIfTI
# and a feet-first one, so the container also runs the canonical-orientation path.
CASES = [
    ((96, 192, 192), (2.5, 1.8, 1.8), (-1, 0, 0, 0, -1, 0, 0, 0, 1)),
    ((80, 160, 176), (3.0, 2.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
    ((64, 160, 160), (3.0, 2.0, 2.0), (-1, 0, 0, 0, -1, 0, 0, 0, -1)),
]


def make_weights(root: Path) -> None:
    from tests.factories import make_model_folder
    from training.cascade_json_writer import write_cascade_json
    root.mkdir(parents=True, exist_ok=True)
    make_model_folder(root / "organ", patch=(32, 64, 64), spacing=(4.0, 3.2, 3.2),
                      arch=None, bias_class=0, seed=7)
    write_cascade_json(root, organ_folder="organ", provenance={"note": "random weights for container tests"})


def make_cases(folder: Path, count: int) -> None:
    from phantom import make_phantom, write_phantom
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        shape, spacing, direction = CASES[index % len(CASES)]
        phantom = make_phantom(100 + index, shape=shape, spacing=spacing, direction=direction)
        write_phantom(phantom, folder / f"case{index:02d}_0000.nii.gz")


if __name__ == "__main__":
    what, target = sys.argv[1], Path(sys.argv[2])
    if what == "weights":
        make_weights(target)
    elif what == "cases":
        make_cases(target, int(sys.argv[3]) if len(sys.argv) > 3 else 3)
    else:
        raise SystemExit(f"unknown asset {what!r}; expected weights or cases")
