"""Bad inputs, odd scans and environment faults: the engine writes every good case, names every bad
one, never leaves a partial file and never needs the network.

What tests/test_io.py and tests/test_cli.py already cover is not repeated here, except inside the
one batch test that mixes every kind of bad file with good ones (the main job's contract).
SimpleITK refuses to create some bad files itself (SetSpacing rejects zero and negative spacing),
so those are made by editing headers byte by byte.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from inference.app.cli import EXIT_FATAL, EXIT_OK, EXIT_SOME_FAILED, main
from inference.core.geometry import Geometry
from inference.io.images import InputError, read_ct, read_image, to_sitk
from inference.core.labels import ORGAN_MODEL_LABELS
from tests.factories import make_model_folder

REPO = Path(__file__).resolve().parent.parent
LABELS = {"background": 0, "liver": 1, "spleen": 3}
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
SHAPE = (10, 40, 36)


# ------------------------------------------------------------------------------------ helpers

def ct(shape=SHAPE, seed=0) -> np.ndarray:
    """int16 HU with air: what a real CT holds."""
    rng = np.random.default_rng(seed)
    volume = np.clip(rng.normal(40, 30, shape) - 1000 * (rng.random(shape) < 0.3), -1024, 3071).astype(np.int16)
    volume.flat[0] = -1000
    return volume


def geometry(shape=SHAPE, direction=IDENTITY, spacing=(2.5, 1.5, 1.25)) -> Geometry:
    return Geometry(shape, spacing, (12.0, -40.0, 7.5), direction)


def write(path, array, geom=None, compress=False) -> Path:
    geom = geom or geometry(array.shape)
    sitk.WriteImage(to_sitk(array, geom), str(path), useCompression=compress)
    return Path(path)


def rotation_z(degrees) -> tuple[float, ...]:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return tuple(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).ravel())


def edit_mha(path, old: bytes, new: bytes) -> Path:
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new))
    return path


def nifti_with_pixdim(path, value: float) -> Path:
    """An uncompressed NIfTI whose header voxel size along x is `value` (SimpleITK will not write it)."""
    write(path, ct())
    raw = bytearray(path.read_bytes())
    raw[80:84] = struct.pack("<f", value)  # pixdim[1]
    path.write_bytes(bytes(raw))
    return path


def corrupt_gzip(path) -> Path:
    write(path, ct(), compress=True)
    raw = bytearray(path.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 32):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


def truncated(path) -> Path:
    write(path, ct(), compress=path.name.endswith(".gz"))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def multi_member_gzip(path) -> Path:
    """A valid .nii.gz written as two gzip members (bgzip, pigz --independent): must still be read."""
    plain = write(path.with_name("plain.nii"), ct(seed=4))
    data = plain.read_bytes()
    plain.unlink()
    path.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:]))
    return path


def read_labels(path) -> tuple[np.ndarray, sitk.Image]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), image


def assert_geometry_of_input(output, source):
    out, src = sitk.ReadImage(str(output)), sitk.ReadImage(str(source))
    assert out.GetSize() == src.GetSize()
    assert out.GetSpacing() == pytest.approx(src.GetSpacing(), rel=1e-6)
    assert out.GetOrigin() == pytest.approx(src.GetOrigin(), abs=1e-4)
    assert out.GetDirection() == pytest.approx(src.GetDirection(), abs=1e-6)
    assert out.GetPixelID() == sitk.sitkUInt8


def run(*args) -> int:
    return main([str(a) for a in args] + ["--no-progress"])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def set_background_bias(folder: Path, value: float) -> None:
    """Make a random-weight model predict background everywhere (nothing found)."""
    for checkpoint in folder.glob("fold_*/checkpoint_final.pth"):
        saved = torch.load(checkpoint, weights_only=True)
        for key, tensor in saved["network_weights"].items():
            if key.startswith("decoder.seg_layers.") and key.endswith(".bias"):
                tensor[0] += value
        torch.save(saved, checkpoint)


def make_cascade(root: Path, *, background_bias: float = 0.0) -> Path:
    from training.cascade_json_writer import write_cascade_json
    organ = make_model_folder(root / "organ", labels=ORGAN_MODEL_LABELS, seed=1)
    if background_bias:
        set_background_bias(organ, background_bias)
    write_cascade_json(root, organ_folder="organ")
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("model") / "m", labels=LABELS, seed=1)


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    return make_cascade(tmp_path_factory.mktemp("cascade"))


@pytest.fixture()
def cascade_copy(cascade, tmp_path):
    return Path(shutil.copytree(cascade, tmp_path / "weights"))


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


def mount(*args) -> bool:
    return subprocess.run(["mount", *map(str, args)], capture_output=True).returncode == 0


def umount(target) -> None:
    subprocess.run(["umount", str(target)], capture_output=True)


# ------------------------------------------------------------------------ the main job's contract

GOOD = {  # case id -> writer; each must be segmented and written with its input's geometry
    "normal": lambda d: write(d / "normal_0000.nii.gz", ct(seed=1), compress=True),
    "feet_first": lambda d: write(d / "feet_first_0000.mha", ct(seed=2), geometry(direction=(1, 0, 0, 0, 1, 0, 0, 0, -1))),
    "oblique": lambda d: write(d / "oblique_0000.nrrd", ct(seed=3), geometry(direction=rotation_z(20))),
    "uint16_no_rescale": lambda d: write(d / "uint16_no_rescale_0000.nii.gz", (ct(seed=5).astype(np.int32) + 1024).astype(np.uint16)),
    "one_slice": lambda d: write(d / "one_slice_0000.nii.gz", ct((1, 40, 36), seed=6)),
    "constant_air": lambda d: write(d / "constant_air_0000.nii.gz", np.full(SHAPE, -1000, np.int16)),
    "fewer_slices_than_patch": lambda d: write(d / "fewer_slices_than_patch_0000.nii.gz", ct((5, 40, 36), seed=7)),
    "padding_32768": lambda d: write(d / "padding_32768_0000.nii.gz", np.pad(ct((8, 30, 30), seed=8), 3, constant_values=-32768)),
    "multi_member_gzip": lambda d: multi_member_gzip(d / "multi_member_gzip_0000.nii.gz"),
}

BAD = {  # case id -> (writer, the cause the report must name)
    "corrupt_gzip": (lambda d: corrupt_gzip(d / "corrupt_gzip_0000.nii.gz"), "not a readable image"),
    "truncated_gz": (lambda d: truncated(d / "truncated_gz_0000.nii.gz"), "truncated"),
    "truncated_nii": (lambda d: truncated(d / "truncated_nii_0000.nii"), "truncated"),
    "empty": (lambda d: (d / "empty_0000.nii.gz").write_bytes(b""), "empty file"),
    "garbage": (lambda d: (d / "garbage_0000.nii.gz").write_bytes(b"GIF89a not a scan" * 10), "not a readable image"),
    "notes": (lambda d: (d / "notes.txt").write_text("not a scan"), "unknown extension"),
    "flat": (lambda d: sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 5), np.int16)), str(d / "flat_0000.nii.gz")), "2D image"),
    "series": (lambda d: sitk.WriteImage(sitk.Image([3, 3, 3, 2], sitk.sitkInt16), str(d / "series_0000.nii.gz")), "4D image"),
    "rgb": (lambda d: sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True),
                                      str(d / "rgb_0000.mha")), "vector pixel type"),
    "nan": (lambda d: write(d / "nan_0000.mha", np.where(ct() > 0, np.nan, ct()).astype(np.float32)), "non-finite"),
    "inf": (lambda d: write(d / "inf_0000.nrrd", np.where(ct() > 60, np.inf, ct()).astype(np.float32)), "non-finite"),
    "skewed": (lambda d: edit_mha(write(d / "skewed_0000.mha", ct()), b"TransformMatrix = 1 0 0 0 1 0 0 0 1",
                                  b"TransformMatrix = 1 0 0 0.5 1 0 0 0 1"), "orthonormal"),
    "zero_spacing": (lambda d: edit_mha(write(d / "zero_spacing_0000.mha", ct()), b"ElementSpacing = 1.25 1.5 2.5",
                                        b"ElementSpacing = 0 1.5 2.5"), "spacing"),
    "nan_spacing": (lambda d: edit_mha(write(d / "nan_spacing_0000.mha", ct()), b"ElementSpacing = 1.25 1.5 2.5",
                                       b"ElementSpacing = nan 1.5 2.5"), "spacing"),
    "zero_pixdim": (lambda d: nifti_with_pixdim(d / "zero_pixdim_0000.nii", 0.0), "pixdim"),
    "nan_pixdim": (lambda d: nifti_with_pixdim(d / "nan_pixdim_0000.nii", float("nan")), "pixdim"),
    "negative_pixdim": (lambda d: nifti_with_pixdim(d / "negative_pixdim_0000.nii", -1.1), "pixdim"),
    # a constant 0 holds no body and is not HU air: not taken as CT (tests/test_ct_inputs.py has the rules)
    "constant_zero": (lambda d: write(d / "constant_zero_0000.nii.gz", np.zeros(SHAPE, np.int16)), "not CT"),
}


def test_batch_with_every_kind_of_bad_file_mixed_in(tmp_path, cascade, caplog):
    """The main job: every good case written with its input's geometry, every bad one named with
    its cause, exit 1, nothing partial or temporary left, the read-only input folder untouched."""
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for make in GOOD.values():
        make(inputs)
    for make, _ in BAD.values():
        make(inputs)
    sources = {p.name: p for p in inputs.iterdir()}
    for path in inputs.iterdir():
        path.chmod(0o444)
    inputs.chmod(0o555)
    before = snapshot(inputs)
    with caplog.at_level(logging.WARNING):
        code = run("-i", inputs, "-o", outputs, "--model", cascade)
    inputs.chmod(0o755)
    assert code == EXIT_SOME_FAILED
    assert snapshot(inputs) == before
    assert sorted(os.listdir(outputs)) == sorted([f"{c}.nii.gz" for c in GOOD] + ["run_report.json"])
    report = json.loads((outputs / "run_report.json").read_text())
    by_id = {c["case_id"]: c for c in report["cases"]}
    for case_id in GOOD:
        assert by_id[case_id]["status"] == "ok", (case_id, by_id[case_id]["error"])
        source = next(p for name, p in sources.items() if name.startswith(f"{case_id}_0000"))
        assert_geometry_of_input(outputs / f"{case_id}.nii.gz", source)
        labels, _ = read_labels(outputs / f"{case_id}.nii.gz")
        assert labels.max() <= 14
    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("FAILED")]
    for case_id, (_, cause) in BAD.items():
        assert by_id[case_id]["status"] == "failed" and cause in by_id[case_id]["error"], (case_id, by_id[case_id]["error"])
        assert any(case_id in message and cause in message for message in failures), case_id
    assert report["summary"]["failed"] == len(BAD) and report["summary"]["ok"] == len(GOOD)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("uint16_no_rescale_0000.nii.gz" in w and "shifted by -1024" in w for w in warnings)


# ------------------------------------------------------------------------------ reading faults

@pytest.mark.parametrize("value", [0.0, float("nan"), -1.1])
def test_nifti_header_voxel_size_must_be_finite_and_positive(tmp_path, value):
    """ITK would read these as 1 mm (zero, NaN) or as a mirrored x axis (negative): a silent error."""
    path = nifti_with_pixdim(tmp_path / "a.nii", value)
    with pytest.raises(InputError, match="pixdim") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_truncated_nifti_is_rejected_not_zero_filled(tmp_path):
    """ITK fills the missing voxels of a truncated NIfTI and reports success."""
    for name in ("a.nii.gz", "b.nii"):
        path = truncated(tmp_path / name)
        with pytest.raises(InputError, match="truncated"):
            read_image(path)


def test_multi_member_gzip_is_read(tmp_path):
    array, _ = read_image(multi_member_gzip(tmp_path / "a.nii.gz"))
    np.testing.assert_array_equal(array, ct(seed=4))


def test_negative_mha_spacing_is_read_as_a_mirrored_axis(tmp_path):
    """MetaIO turns a negative spacing into a flipped direction: a valid geometry, so it is accepted."""
    path = edit_mha(write(tmp_path / "a.mha", ct()), b"ElementSpacing = 1.25 1.5 2.5", b"ElementSpacing = -1.25 1.5 2.5")
    _, geom = read_image(path)
    assert geom.spacing == pytest.approx((2.5, 1.5, 1.25))
    assert geom.direction[0] == -1.0


def test_non_orthonormal_directions(tmp_path):
    """MHA and NRRD keep a skewed matrix (rejected); ITK's NIfTI reader replaces it by an orthonormal one."""
    image = to_sitk(ct(), geometry())
    image.SetDirection((1, 0, 0, 0.5, 1, 0, 0, 0, 1))
    for suffix in (".mha", ".nrrd"):
        sitk.WriteImage(image, str(tmp_path / f"a{suffix}"))
        with pytest.raises(InputError, match="orthonormal"):
            read_image(tmp_path / f"a{suffix}")
    sitk.WriteImage(image, str(tmp_path / "a.nii.gz"))
    _, geom = read_image(tmp_path / "a.nii.gz")
    matrix = geom.direction_matrix
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(3), atol=1e-6)


def test_non_hu_rule(tmp_path, caplog):
    """No voxel below 0 cannot be HU (air is -1000): shifted by -1024 with a warning naming the file."""
    hu = ct(seed=9)
    path = write(tmp_path / "u16.nii.gz", (hu.astype(np.int32) + 1024).astype(np.uint16))
    with caplog.at_level(logging.WARNING):
        shifted, _ = read_ct(path)
    np.testing.assert_array_equal(shifted, hu)
    assert any(str(path) in r.getMessage() for r in caplog.records)
    assert read_image(path)[0].min() >= 0  # the generic reader (label maps too) never shifts
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        same, _ = read_ct(write(tmp_path / "hu.nii.gz", hu))
    np.testing.assert_array_equal(same, hu)
    assert not caplog.records


def test_unshifted_uint16_and_32768_padding_segment_like_their_hu_versions(tmp_path, model):
    hu = ct((10, 40, 36), seed=10)
    hu[:, :3] = -1024
    inputs = tmp_path / "in"
    inputs.mkdir()
    write(inputs / "hu_0000.nii.gz", hu)
    write(inputs / "u16_0000.nii.gz", (hu.astype(np.int32) + 1024).astype(np.uint16))
    write(inputs / "pad_0000.nii.gz", np.where(hu == -1024, -32768, hu).astype(np.int16))
    assert run("-i", inputs, "-o", tmp_path / "out", "--model", model, "--report", "-") == EXIT_OK
    reference, _ = read_labels(tmp_path / "out" / "hu.nii.gz")
    assert len(np.unique(reference)) > 1
    for case_id in ("u16", "pad"):
        np.testing.assert_array_equal(read_labels(tmp_path / "out" / f"{case_id}.nii.gz")[0], reference)


@pytest.mark.parametrize("export", ["logits", "argmax"])
def test_tiny_and_degenerate_volumes(tmp_path, model, export):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shapes = {"one_slice": (1, 40, 36), "two_slices": (2, 40, 36), "one_row": (12, 1, 36), "single_voxel": (1, 1, 1),
              "smaller_than_patch": (3, 5, 4), "constant": None}
    for case_id, shape in shapes.items():
        array = np.full(SHAPE, 300, np.int16) if shape is None else ct(shape, seed=11)
        write(inputs / f"{case_id}_0000.nii.gz", array)
    # --assume-ct: a constant image and a single voxel hold too little to be judged CT
    assert run("-i", inputs, "-o", tmp_path / "out", "--model", model, "--report", "-", "--export", export,
               "--assume-ct") == EXIT_OK
    for case_id in shapes:
        assert_geometry_of_input(tmp_path / "out" / f"{case_id}.nii.gz", inputs / f"{case_id}_0000.nii.gz")


def test_nothing_found_writes_an_all_zero_map(tmp_path):
    weights = make_cascade(tmp_path / "weights", background_bias=1e4)
    inputs = tmp_path / "in"
    inputs.mkdir()
    write(inputs / "A_0000.nii.gz", ct(seed=12), geometry(direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)))
    write(inputs / "B_0000.nii.gz", ct((6, 20, 18), seed=13), geometry((6, 20, 18), direction=rotation_z(-30)))
    report = tmp_path / "report.json"
    assert run("-i", inputs, "-o", tmp_path / "out", "--model", weights, "--report", report) == EXIT_OK
    for case_id in ("A", "B"):
        labels, _ = read_labels(tmp_path / "out" / f"{case_id}.nii.gz")
        assert not labels.any()
        assert_geometry_of_input(tmp_path / "out" / f"{case_id}.nii.gz", inputs / f"{case_id}_0000.nii.gz")
    assert [c["labels_present"] for c in json.loads(report.read_text())["cases"]] == [[], []]


# --------------------------------------------------------------------------- a large volume

LARGE_EXPORT = r"""
import json, resource, sys, time
import numpy as np, torch
import inference.engine.logits_to_labels as export
from inference.engine.preprocessing import CropBox, Preprocessed

method, classes = sys.argv[1], int(sys.argv[2])
shape = (1500, 512, 512)  # the issue's 512 x 512 x 1500 scan
low = (150, 128, 128)
logits = torch.full((classes, *low), -5.0)
logits[0] = 5.0
logits[1, :, 60:70, 60:70] = 10.0  # an organ: a column through every slice
largest = [0]
resample_axis = export.resample_axis
def watched(x, *args, **kwargs):
    out = resample_axis(x, *args, **kwargs)
    largest[0] = max(largest[0], x.numel(), out.numel())
    return out
export.resample_axis = watched
pre = Preprocessed(None, shape, shape, CropBox((0, 0, 0), shape), (1.0, 1.0, 1.0))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
from tests.reference_export import export_labels
labels = export_labels(logits, pre, (0, 1, 2), method)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
column = labels[:, 241:279, 241:279]
print(json.dumps({"shape": labels.shape, "extra_bytes": peak - before, "seconds": seconds, "largest": largest[0],
                  "column_all_one": bool((column == 1).all()), "outside": int(labels[:, :200].sum() + labels[:, 320:].sum()),
                  "count": int(np.count_nonzero(labels))}))
"""


@pytest.mark.parametrize("method", ["logits", "argmax"])
def test_512x512x1500_export_has_bounded_memory_and_no_32_bit_overflow(method):
    """Labels for a 512x512x1500 scan (393M voxels) from 6-class logits: the full-resolution logit map
    would hold 2.4e9 (> 2**31) values and 9.4 GB; the export holds the uint8 output plus slab-sized
    pieces, and no tensor it resamples comes near 2**31 elements. (That F.interpolate calls are
    chunked below 2**31 elements at any size is proven in tests/test_resampling.py: chunked results
    equal unchunked ones for limits down to one line, and the limit is capped at 2**31 - 1.)"""
    classes = 6
    result = subprocess.run([sys.executable, "-c", LARGE_EXPORT, method, str(classes)], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    voxels = 1500 * 512 * 512
    assert measured["shape"] == [1500, 512, 512]
    assert classes * voxels > 2**31  # what a whole-map interpolation would have to index
    assert measured["extra_bytes"] < 2.5 * voxels  # the uint8 output (plus one copy for "argmax"), never floats
    assert measured["column_all_one"] and measured["outside"] == 0
    assert measured["count"] >= 1500 * 38 * 38
    if method == "logits":
        assert 0 < measured["largest"] < 2**31 // 8


# ------------------------------------------------------------------------------ weight faults

def _weights_fault(weights: Path, fault: str) -> None:
    from training.cascade_json_writer import write_cascade_json
    checkpoint = next(weights.glob("organ/fold_*/checkpoint_final.pth"))
    if fault == "missing_file":
        checkpoint.unlink()
    elif fault == "flipped_byte":
        data = bytearray(checkpoint.read_bytes())
        data[len(data) // 2] ^= 0x01
        checkpoint.write_bytes(bytes(data))
    elif fault == "unknown_architecture":  # a consistent manifest (valid SHA-256) naming a class we never load
        plans_path = weights / "organ" / "plans.json"
        plans = json.loads(plans_path.read_text())
        plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "os.system"
        plans_path.write_text(json.dumps(plans))
        write_cascade_json(weights, organ_folder="organ")
    elif fault == "manifest_not_json":
        (weights / "cascade.json").write_text("{ not json")


@pytest.mark.parametrize("fault,message", [("missing_file", "missing"), ("flipped_byte", "SHA-256 mismatch"),
                                           ("unknown_architecture", "os.system"), ("manifest_not_json", "not valid JSON")])
def test_weight_faults_are_fatal_before_any_case(tmp_path, cascade_copy, caplog, fault, message):
    _weights_fault(cascade_copy, fault)
    inputs = tmp_path / "in"
    inputs.mkdir()
    write(inputs / "A_0000.nii.gz", ct())
    with caplog.at_level(logging.INFO):
        assert run("-i", inputs, "-o", tmp_path / "out", "--model", cascade_copy) == EXIT_FATAL
    assert not list((tmp_path / "out").glob("*.nii.gz"))
    assert any(r.getMessage().startswith("fatal") and message in r.getMessage() for r in caplog.records)
    assert not any("case(s) from" in r.getMessage() for r in caplog.records)  # no case was started


# ------------------------------------------------------------------------- folder faults

def test_missing_output_folder_is_created(tmp_path, model):
    write(tmp_path / "A_0000.nii.gz", ct())
    out = tmp_path / "not" / "yet" / "there"
    assert run("-i", tmp_path / "A_0000.nii.gz", "-o", out, "--model", model, "--report", "-") == EXIT_OK
    assert os.listdir(out) == ["A.nii.gz"]


def test_output_folder_not_writable_is_fatal(tmp_path, model):
    write(tmp_path / "A_0000.nii.gz", ct())
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert run("-i", tmp_path / "A_0000.nii.gz", "-o", a_file / "out", "--model", model) == EXIT_FATAL
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    if os.geteuid() != 0:
        readonly.chmod(0o555)
    elif not (can_mount() and mount("-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", readonly)):
        pytest.skip("root without permission to mount a read-only tmpfs")
    try:
        assert run("-i", tmp_path / "A_0000.nii.gz", "-o", readonly, "--model", model) == EXIT_FATAL
        assert os.listdir(readonly) == []
    finally:
        umount(readonly) if os.geteuid() == 0 else readonly.chmod(0o755)


def test_read_only_input_folder(tmp_path, model):
    source = tmp_path / "source"
    source.mkdir()
    write(source / "A_0000.nii.gz", ct())
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    mounted = can_mount() and mount("--bind", source, inputs) and mount("-o", "remount,bind,ro", inputs)
    if not mounted:
        umount(inputs)
        shutil.copy(source / "A_0000.nii.gz", inputs)
        inputs.chmod(0o555)
    try:
        if mounted:
            with pytest.raises(OSError):
                (inputs / "probe").write_text("x")
        before = snapshot(inputs)
        assert run("-i", inputs, "-o", tmp_path / "out", "--model", model, "--report", "-") == EXIT_OK
        assert snapshot(inputs) == before
        assert os.listdir(tmp_path / "out") == ["A.nii.gz"]
    finally:
        umount(inputs) if mounted else inputs.chmod(0o755)


# ------------------------------------------------------------------------ killed mid-write

KILLER = r"""
import os, signal, sys
import inference.io.images as io

mode = sys.argv[1]
if mode == "before_rename":  # the temporary file is complete; the process dies before os.replace
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(".nii.gz"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)
    io.os.replace = replace
elif mode == "while_writing":  # half of the temporary file is on disk
    def write_image(image, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"\x1f\x8b\x08" + b"half a label map" * 64)
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    io.sitk.WriteImage = write_image
from inference.app.cli import main
sys.exit(main(sys.argv[2:]))
"""


def killed_run(mode, inputs, outputs, model_folder):
    return subprocess.run([sys.executable, "-c", KILLER, mode, "-i", str(inputs), "-o", str(outputs), "--model",
                           str(model_folder), "--report", "-", "--no-progress"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("mode", ["before_rename", "while_writing"])
def test_sigkill_mid_write_leaves_no_partial_output_and_a_rerun_completes(tmp_path, model, mode):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    write(inputs / "A_0000.nii.gz", ct())
    result = killed_run(mode, inputs, outputs, model)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    left = os.listdir(outputs)
    assert "A.nii.gz" not in left  # never a partial file under the final name
    assert [name for name in left if not name.startswith(".")] == []
    assert any(".partial-" in name for name in left)  # the temporary the kill left behind
    assert run("-i", inputs, "-o", outputs, "--model", model, "--report", "-") == EXIT_OK
    assert os.listdir(outputs) == ["A.nii.gz"]  # stale temporaries removed, the case complete
    read_image(outputs / "A.nii.gz")


def test_sigkill_at_an_arbitrary_moment(tmp_path, model):
    """A real kill from outside, at whatever point the run has reached: every visible output is complete."""
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for index in range(4):
        write(inputs / f"C{index}_0000.nii.gz", ct(seed=index))
    process = subprocess.Popen([sys.executable, "-m", "inference", "-i", str(inputs), "-o", str(outputs), "--model",
                                str(model), "--report", "-", "--no-progress"], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if outputs.is_dir() and any(name.endswith(".nii.gz") for name in os.listdir(outputs)):
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    for name in os.listdir(outputs):
        if not name.startswith("."):
            read_image(outputs / name)  # complete and readable
    assert run("-i", inputs, "-o", outputs, "--model", model, "--report", "-") == EXIT_OK
    assert sorted(os.listdir(outputs)) == [f"C{index}.nii.gz" for index in range(4)]


# ------------------------------------------------------------------------------- no network

def test_no_network_use_at_run_time(tmp_path, cascade, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network use at run time")
    monkeypatch.setattr(socket.socket, "__init__", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(AssertionError):
        socket.socket()
    write(tmp_path / "A_0000.nii.gz", ct())
    assert run("-i", tmp_path / "A_0000.nii.gz", "-o", tmp_path / "out", "--model", cascade) == EXIT_OK
    assert (tmp_path / "out" / "A.nii.gz").is_file()
