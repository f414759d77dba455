"""What DICOM SEG output and the quality check add per case, beside writing the NIfTI label map.

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.dicom_seg_cost [--slices 300] [--repeats 3]

A phantom of a clinical size (SLICES x 512 x 512, 0.8 mm in plane, an adult-sized patient) is
written as a DICOM series (tests/dicom_series.py), read back as the engine reads it, and its true
label map is written as NIfTI (the baseline every run pays), as a binary and as a label-map DICOM
SEG (series headers read and matched, the SEG built and written), and checked by
inference.app.quality. Each is timed REPEATS
times in the same process, alternating; the medians are printed with their ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_seconds(step, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--slice-mm", type=float, default=1.25)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from inference.app.dicom_seg.writer import write_dicom_seg
    from inference.io.images import read_ct, write_labels
    from phantom import make_phantom
    from inference.app.quality import check_quality
    from tests.dicom_series import write_ct_series

    phantom = make_phantom(2026, shape=(args.slices, 512, 512), spacing=(args.slice_mm, 0.8, 0.8), phase="venous",
                           fov="abdomen-pelvis")
    with tempfile.TemporaryDirectory(dir="out" if Path("out").is_dir() else None) as scratch:
        scratch = Path(scratch)
        write_ct_series(scratch / "series", phantom.image, phantom.geometry)
        volume, geometry = read_ct(scratch / "series")
        labels = phantom.labels
        assert geometry.shape == labels.shape
        write_dicom_seg(scratch / "warm.seg.dcm", labels, geometry, scratch / "series")  # one-off: highdicom loads its tables
        result = {
            "shape_zyx": list(labels.shape), "labels_present": int(len(np.unique(labels)) - 1),
            "nifti_write_s": _median_seconds(lambda: write_labels(scratch / "labels.nii.gz", labels, geometry), args.repeats),
            "dicom_seg_s": _median_seconds(lambda: write_dicom_seg(scratch / "labels.seg.dcm", labels, geometry,
                                                                    scratch / "series"), args.repeats),
            "seg_file_mb": (scratch / "labels.seg.dcm").stat().st_size / 2**20,
            "dicom_seg_labelmap_s": _median_seconds(lambda: write_dicom_seg(scratch / "map.seg.dcm", labels, geometry,
                                                                             scratch / "series", labelmap=True),
                                                    args.repeats),
            "labelmap_file_mb": (scratch / "map.seg.dcm").stat().st_size / 2**20,
            "quality_check_s": _median_seconds(lambda: check_quality(labels, volume, geometry), args.repeats),
        }
    result["dicom_seg_over_nifti"] = result["dicom_seg_s"] / result["nifti_write_s"]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
