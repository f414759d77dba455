"""Export: cropped, slab-wise logit interpolation equals interpolating everything, then argmax."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import inference.engine.logits_to_labels as export
from inference.engine.logits_to_labels import SlabExport, output_span, resample_axis
from inference.resampling.fast import source_range_for_output
from inference.engine.preprocessing import CropBox, Preprocessed
from tests.reference_export import export_labels, logits_to_labels_interpolated


def full_reference(logits: torch.Tensor, out_shape) -> np.ndarray:
    """The slow way: the whole map at full resolution (area down, linear up per axis), then argmax."""
    x = logits[None].double()
    for axis, size in enumerate(out_shape):
        current = list(x.shape[2:])
        if size == current[axis]:
            continue
        current[axis] = size
        mode = "trilinear" if size > x.shape[2 + axis] else "area"
        kwargs = {"align_corners": False} if mode == "trilinear" else {}
        x = F.interpolate(x, size=tuple(current), mode=mode, **kwargs)
    return x[0].argmax(0).to(torch.uint8).numpy()


def blob_logits(shape, classes=4, seed=0):
    """Logits with compact foreground blobs on a background-dominated map (like a real organ model)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=0.5, size=(classes, *shape)).astype(np.float32)
    logits[0] += 3
    for k in range(1, classes):
        centre = [rng.integers(s // 4, 3 * s // 4 + 1) for s in shape]
        grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
        distance = sum(((g - c) / max(s / 5, 1)) ** 2 for g, c, s in zip(grid, centre, shape))
        logits[k] += 6 * np.exp(-distance)
    return torch.from_numpy(logits)


@pytest.mark.parametrize("in_shape,out_shape", [
    ((12, 16, 16), (12, 40, 41)),   # in-plane upsampling only (typical 1.6 mm -> 0.8 mm)
    ((10, 14, 12), (25, 30, 29)),   # all axes up
    ((20, 16, 16), (9, 33, 30)),    # z down (area), in-plane up
    ((11, 13, 9), (11, 13, 9)),     # identity
])
@pytest.mark.parametrize("plane_kernel,border_limit", [(False, 0.0), (True, 0.0), (None, 0.0), (None, 1.0)])
def test_cropped_slabwise_export_equals_full_interpolation(monkeypatch, in_shape, out_shape, plane_kernel,
                                                           border_limit):
    """border_limit 0: every voxel of the window through the dense passes; 1: only border voxels
    interpolated (where no axis shrinks)."""
    monkeypatch.setattr(export, "SLAB_BYTES", 1)  # one output slice per slab: the most chunked case
    monkeypatch.setattr(export, "BOUNDARY_SHARE_LIMIT", border_limit)
    monkeypatch.setattr(export, "BOUNDARY_CHUNK", 7)  # border voxels of several batches per slice
    logits = blob_logits(in_shape)
    labels, window = logits_to_labels_interpolated(logits, out_shape, plane_kernel=plane_kernel)
    ours = np.zeros(out_shape, np.uint8)
    ours[window] = labels
    reference = full_reference(logits, out_shape)
    disagreement = (ours != reference).mean()
    assert disagreement < 1e-4  # float-rounding ties only
    assert ours.any()


@pytest.mark.parametrize("in_shape,out_shape", [((12, 16, 16), (12, 40, 41)), ((10, 14, 12), (25, 30, 29)),
                                                ((6, 9, 7), (6, 9, 7))])
@pytest.mark.parametrize("kind", ["blobs", "speckle"])
def test_border_voxels_only_equal_the_dense_passes(monkeypatch, in_shape, out_shape, kind):
    """Corners that agree decide the label (convexity); the rest is interpolated at the corners:
    the same labels as interpolating every voxel, on smooth organs and on a speckled map whose
    every voxel is a border voxel."""
    logits = blob_logits(in_shape, classes=5, seed=4) if kind == "blobs" else torch.randn(5, *in_shape)
    monkeypatch.setattr(export, "BOUNDARY_SHARE_LIMIT", 0.0)
    dense, dense_window = logits_to_labels_interpolated(logits, out_shape)
    monkeypatch.setattr(export, "BOUNDARY_SHARE_LIMIT", 1.0)
    monkeypatch.setattr(export, "BOUNDARY_CHUNK", 5)
    border, border_window = logits_to_labels_interpolated(logits, out_shape)
    assert border_window == dense_window
    assert (border != dense).mean() < 1e-4  # float-rounding ties only
    reference = full_reference(logits, out_shape)
    assert (border != reference[border_window]).mean() < 1e-4


def test_border_shortcut_declines_maps_that_are_mostly_border():
    logits = torch.randn(5, 8, 10, 10)
    low = export.argmax_channels(logits)
    window = ((0, 8), (0, 20), (0, 20))
    assert export._boundary_labels(logits, low, 0, (8, 10, 10), (8, 20, 20), window, share_limit=0.3) is None
    labels = export._boundary_labels(logits, low, 0, (8, 10, 10), (8, 20, 20), window, share_limit=1.0)
    assert labels.shape == (8, 20, 20)


def test_border_shortcut_reads_no_logits_where_corners_agree(monkeypatch):
    """An organ-like map: only voxels between differently labelled corners are gathered."""
    logits = torch.full((3, 6, 16, 16), -5.0)
    logits[0] = 5
    logits[1, 2:4, 2:14, 2:14] = 10  # a 2x12x12 block of class 1
    gathered = []
    original = export._gather_columns
    monkeypatch.setattr(export, "BOUNDARY_SHARE_LIMIT", 1.0)
    monkeypatch.setattr(export, "_gather_columns", lambda flat, index: gathered.append(len(index)) or original(flat, index))
    labels, window = logits_to_labels_interpolated(logits, (6, 32, 32))
    reference = full_reference(logits, (6, 32, 32))
    np.testing.assert_array_equal(labels, reference[window])
    border_voxels = gathered[0] if gathered else 0
    assert 0 < border_voxels < labels.size / 2


def nearest_z_reference(logits: torch.Tensor, out_shape) -> np.ndarray:
    """nnU-Net's export of an anisotropic scan: nearest neighbour along z (its order_z 0), linear in-plane."""
    from inference.resampling.nnunet import nearest_indices
    rows = logits[:, torch.from_numpy(nearest_indices(logits.shape[1], out_shape[0]))]
    return full_reference(rows, out_shape)


@pytest.mark.parametrize("in_shape,out_shape", [((12, 16, 16), (15, 40, 41)), ((20, 16, 16), (9, 33, 30)),
                                                ((10, 14, 12), (10, 30, 29))])
@pytest.mark.parametrize("border_limit", [0.0, 1.0])
def test_nearest_z_export_equals_nnunet_semantics(monkeypatch, in_shape, out_shape, border_limit):
    monkeypatch.setattr(export, "SLAB_BYTES", 1)
    monkeypatch.setattr(export, "BOUNDARY_SHARE_LIMIT", border_limit)
    logits = blob_logits(in_shape, classes=4, seed=7)
    labels, window = logits_to_labels_interpolated(logits, out_shape, nearest_axes=(True, False, False))
    ours = np.zeros(out_shape, np.uint8)
    ours[window] = labels
    reference = nearest_z_reference(logits, out_shape)
    assert (ours != reference).mean() < 1e-4 and ours.any()
    if in_shape[0] != out_shape[0]:  # and it is not the linear export
        linear = full_reference(logits, out_shape)
        assert (reference != linear).any()


nnunet_resampling = None
try:
    from nnunetv2.preprocessing.resampling import default_resampling as nnunet_resampling
except ImportError:  # training's dependency; the inference-only environment lacks it
    pass


# logits at model spacing (2.5 x 1.6 x 1.6 mm) back to a scan's grid: coarser on every axis (one 3D
# resize), coarser along z only, and separate z (nearest) with the in-plane axes shrinking
@pytest.mark.skipif(nnunet_resampling is None, reason="needs nnunetv2")
@pytest.mark.parametrize("in_shape,scan_spacing", [((20, 24, 24), (3.0, 3.0, 3.0)), ((20, 24, 24), (4.0, 1.0, 2.4)),
                                                   ((12, 30, 30), (6.0, 0.7, 2.0)), ((12, 30, 30), (8.0, 2.0, 2.0))])
@pytest.mark.parametrize("border_limit", [0.0, 1.0])
def test_linear_shrink_equals_nnunet_export(monkeypatch, in_shape, scan_spacing, border_limit):
    """shrink="linear" with nnU-Net's nearest axes gives the labels of nnU-Net's own export
    (`resample_data_or_seg_to_shape(is_seg=False, order=1, order_z=0, force_separate_z=None)`, the
    plans' settings, of the logits, then argmax),
    where averaging ("area") does not."""
    from inference.resampling.nnunet import nearest_axes
    monkeypatch.setattr(export, "SLAB_BYTES", 1)
    monkeypatch.setattr(export, "BOUNDARY_SHARE_LIMIT", border_limit)
    model_spacing = (2.5, 1.6, 1.6)
    out_shape = tuple(int(round(n * m / s)) for n, m, s in zip(in_shape, model_spacing, scan_spacing))
    logits = blob_logits(in_shape, classes=4, seed=11)
    theirs = nnunet_resampling.resample_data_or_seg_to_shape(logits.numpy(), out_shape, model_spacing, scan_spacing,
                                                              is_seg=False, order=1, order_z=0,
                                                              force_separate_z=None).argmax(0)
    nearest = nearest_axes(model_spacing, scan_spacing, 0, None)
    ours = {}
    for shrink in ("linear", "area"):
        labels, window = logits_to_labels_interpolated(logits, out_shape, nearest_axes=nearest, shrink=shrink)
        ours[shrink] = np.zeros(out_shape, np.uint8)
        ours[shrink][window] = labels
    assert len(np.unique(theirs)) > 1
    assert (ours["linear"] != theirs).mean() < 1e-4
    assert (ours["area"] != theirs).mean() > 1e-3  # the averaging export is not nnU-Net's


def test_slab_export_with_linear_shrink_equals_whole_map_export():
    logits = blob_logits((20, 24, 24), classes=3, seed=9)
    pre = Preprocessed(torch.zeros(1), (13, 15, 17), (13, 15, 17), CropBox((0, 0, 0), (13, 15, 17)), (1.0, 1.0, 1.0))
    whole = export_labels(logits, pre, (0, 1, 2), shrink="linear")
    assert len(np.unique(whole)) > 1
    for rows in (1, 3, 20):
        exporter = SlabExport(pre, logits.shape[1:], "logits", shrink="linear")
        for z0 in range(0, 20, rows):
            exporter.add(z0, logits[:, z0:z0 + rows])
        assert (exporter.labels((0, 1, 2)) != whole).mean() < 1e-4
    with pytest.raises(ValueError, match="shrink"):
        SlabExport(pre, logits.shape[1:], "logits", shrink="cubic")


def test_slab_export_with_nearest_z_equals_whole_map_export():
    logits = blob_logits((14, 12, 12), classes=3, seed=8)
    pre = Preprocessed(torch.zeros(1), (17, 30, 30), (17, 30, 30), CropBox((0, 0, 0), (17, 30, 30)), (1.0, 1.0, 1.0))
    whole = export_labels(logits, pre, (0, 1, 2), nearest_axes=(True, False, False))
    for rows in (1, 3, 14):
        exporter = SlabExport(pre, logits.shape[1:], "logits", nearest_axes=(True, False, False))
        for z0 in range(0, 14, rows):
            exporter.add(z0, logits[:, z0:z0 + rows])
        assert (exporter.labels((0, 1, 2)) != whole).mean() < 1e-4


def test_no_foreground_gives_all_background():
    logits = torch.zeros(3, 5, 6, 7)
    logits[0] = 1
    labels, window = logits_to_labels_interpolated(logits, (10, 12, 14))
    assert window is None


@pytest.mark.parametrize("in_size,out_size", [(10, 23), (23, 10), (7, 7), (5, 16), (16, 5)])
def test_axis_resampling_window_equals_full_axis(in_size, out_size):
    x = torch.randn(2, in_size, 3, dtype=torch.float64)
    full = resample_axis(x, 1, in_size, out_size, 0, out_size)
    mode = "linear" if out_size > in_size else "area"
    reference = F.interpolate(x.permute(0, 2, 1).reshape(6, 1, in_size), size=out_size, mode=mode,
                              **({"align_corners": False} if mode == "linear" else {}))
    torch.testing.assert_close(full, reference.reshape(2, 3, out_size).permute(0, 2, 1))
    for start, stop in [(0, 1), (2, min(5, out_size)), (out_size - 2, out_size)]:
        lo, hi = source_range_for_output(in_size, out_size, start, stop)
        window = resample_axis(x[:, lo:hi], 1, in_size, out_size, start, stop, in_offset=lo)
        torch.testing.assert_close(window, full[:, start:stop])


def test_output_span_covers_every_output_reading_the_box():
    in_size, out_size = 12, 37
    for box in [(0, 1), (3, 6), (11, 12)]:
        start, stop = output_span(in_size, out_size, *box)
        x = torch.zeros(1, in_size, dtype=torch.float64)
        x[0, box[0]:box[1]] = 1
        touched = np.flatnonzero(resample_axis(x, 1, in_size, out_size, 0, out_size)[0].numpy() > 0)
        assert start <= touched.min() and touched.max() < stop


def test_export_places_crop_transposes_back_and_maps_label_values():
    logits = torch.full((3, 4, 6, 5), -5.0)
    logits[0] = 5
    logits[2, 1:3, 2:4, 1:4] = 10  # class index 2
    crop = CropBox((1, 0, 2), (5, 6, 7))
    pre = Preprocessed(torch.zeros(1), input_shape=(7, 6, 8), transposed_shape=(8, 6, 7), crop=crop,
                       spacing_before_resampling=(1.0, 1.0, 1.0))
    for method in ("logits", "argmax"):
        labels = export_labels(logits, pre, transpose_backward=(2, 1, 0), method=method, label_values=[0, 1, 14])
        assert labels.shape == (7, 6, 8) and labels.dtype == np.uint8
        transposed = labels.transpose(2, 1, 0)
        expected = np.zeros((8, 6, 7), np.uint8)
        expected[1 + 1:1 + 3, 2:4, 2 + 1:2 + 4] = 14
        np.testing.assert_array_equal(transposed, expected)


def test_argmax_export_is_nearest_upsampling_of_low_resolution_labels():
    logits = blob_logits((6, 8, 8), classes=3, seed=3)
    pre = Preprocessed(torch.zeros(1), (6, 16, 16), (6, 16, 16), CropBox((0, 0, 0), (6, 16, 16)), (1.0, 1.0, 1.0))
    labels = export_labels(logits, pre, (0, 1, 2), method="argmax")
    low = logits.argmax(0).numpy()
    np.testing.assert_array_equal(labels, low.repeat(2, axis=1).repeat(2, axis=2))


# ------------------------------------------------------------------ logits arriving in z-slabs

def _slab_export(logits, pre, method, slab_rows, transpose_backward=(2, 1, 0), label_values=(0, 1, 2, 14)):
    exporter = SlabExport(pre, logits.shape[1:], method)
    held = []
    for z0 in range(0, logits.shape[1], slab_rows):
        exporter.add(z0, logits[:, z0:z0 + slab_rows])
        held.append(0 if exporter.rows is None else exporter.rows.shape[1])
    return exporter.labels(transpose_backward, list(label_values)), held


@pytest.mark.parametrize("in_shape,out_shape", [
    ((12, 16, 16), (12, 40, 41)),   # z kept, in-plane up
    ((10, 14, 12), (25, 30, 29)),   # all axes up
    ((20, 16, 16), (9, 33, 30)),    # z down (area), in-plane up
    ((11, 13, 9), (11, 13, 9)),     # identity
])
@pytest.mark.parametrize("method", ["logits", "argmax"])
@pytest.mark.parametrize("slab_rows", [1, 3, 64])
def test_slab_export_equals_whole_map_export(in_shape, out_shape, method, slab_rows):
    logits = blob_logits(in_shape, classes=4, seed=2)
    transposed = (out_shape[0] + 3, out_shape[1] + 2, out_shape[2] + 1)
    crop = CropBox((1, 2, 0), (1 + out_shape[0], 2 + out_shape[1], out_shape[2]))
    pre = Preprocessed(torch.zeros(1), transposed[::-1], transposed, crop, (1.0, 1.0, 1.0))
    whole = export_labels(logits, pre, (2, 1, 0), method, [0, 1, 2, 14])
    ours, held = _slab_export(logits, pre, method, slab_rows)
    assert whole.any()
    np.testing.assert_array_equal(ours, whole)
    # rows are dropped once no later output reads them: a slab plus the one row linear/area
    # interpolation reaches back (two for area bins spanning a slab boundary)
    assert max(held) <= slab_rows + 2


@pytest.mark.parametrize("out_shape", [(60, 60, 60), (150, 48, 48), (30, 50, 50)])
def test_slab_export_differs_from_whole_map_only_by_rounding_on_many_classes(out_shape):
    """14 noisy classes on a map much longer than a slab: per-slab windows may change the
    in-plane kernel or the order of additions, never more than float-rounding ties (measured
    when written: all voxels equal)."""
    logits = blob_logits((60, 24, 24), classes=14, seed=5)
    logits += torch.from_numpy(np.random.default_rng(5).normal(scale=1.0, size=logits.shape).astype(np.float32))
    pre = Preprocessed(torch.zeros(1), out_shape, out_shape, CropBox((0, 0, 0), out_shape), (1.0, 1.0, 1.0))
    whole = export_labels(logits, pre, (0, 1, 2), "logits")
    ours, _ = _slab_export(logits, pre, "logits", 7, (0, 1, 2), range(14))
    assert len(np.unique(whole)) > 5
    assert (ours == whole).mean() >= 0.9999


def test_slab_export_rejects_slabs_out_of_order_and_early_results():
    logits = blob_logits((6, 8, 8), classes=3)
    pre = Preprocessed(torch.zeros(1), (6, 8, 8), (6, 8, 8), CropBox((0, 0, 0), (6, 8, 8)), (1.0, 1.0, 1.0))
    exporter = SlabExport(pre, (6, 8, 8))
    exporter.add(0, logits[:, :2])
    with pytest.raises(ValueError, match="in order"):
        exporter.add(3, logits[:, 3:])
    with pytest.raises(ValueError, match="2 of 6"):
        exporter.labels((0, 1, 2))


@pytest.mark.parametrize("shape,dtype", [((14, 6, 9, 11), torch.float32), ((3, 50), torch.float32),
                                         ((5, 4, 7), torch.bfloat16), ((1, 8), torch.float32)])
def test_argmax_channels_equals_torch_argmax_ties_included(shape, dtype):
    scores = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape))).to(dtype)
    scores = (scores * 2).round() / 2  # coarse values: many exact ties between classes
    labels = export.argmax_channels(scores)
    assert labels.dtype == torch.uint8 and labels.shape == scores.shape[1:]
    assert torch.equal(labels, scores.argmax(0).to(torch.uint8))
    assert torch.equal(export.argmax_channels(scores[:, :0]), torch.zeros(scores.shape[1:])[:0].to(torch.uint8))
