"""The cascade with oracle "networks": callables returning planted labels, exact assertions."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.cascade import segmenter as cascade_module
from inference.cascade.segmenter import (CascadeSegmenter, SlabCrop, aorta_crop, cranio_caudal_axis, filter_tumor,
                               merge_tumor, organ_crop_box)
from inference.cascade.parameters import CascadeParameters
from inference.engine.runner import EngineOptions
from inference.core.geometry import Geometry
from inference.cascade.cascade_json import Manifest, ManifestError, TumorStage
from inference.cascade.postprocessing import ComponentRule

LIVER, RIGHT_KIDNEY, PANCREAS, AORTA, GALLBLADDER, LEFT_KIDNEY, TUMOR = 1, 2, 4, 5, 9, 13, 14
TUMOR_HU = 1234.0  # the tumor oracle calls tumor wherever its crop holds exactly this value
HEAD_FIRST = (1, 0, 0, 0, 1, 0, 0, 0, 1)
FEET_FIRST = (1, 0, 0, 0, 1, 0, 0, 0, -1)
FLIPPED_IN_PLANE = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
PERMUTED = (0, 0, 1, 0, 1, 0, 1, 0, 0)  # array axis 2 (ITK index x) runs along the patient's z, head-wards
PERMUTED_FEET_FIRST = (0, 0, 1, 0, 1, 0, -1, 0, 0)
ALL_STAGES = ((LIVER, False), (RIGHT_KIDNEY, True), (PANCREAS, False), (LEFT_KIDNEY, True))


def make_manifest(parameters=None, stages=((LIVER, False),)) -> Manifest:
    root = Path("/nonexistent/weights")
    return Manifest(root, root / "organ", tuple(TumorStage(o, root / f"tumor_{o}", c) for o, c in stages),
                    dict(parameters or {}))


class OrganOracle:
    def __init__(self, labels: np.ndarray):
        self.labels = labels
        self.labels.setflags(write=False)  # the cascade must not write into a stage's output
        self.inputs = []

    def __call__(self, volume, spacing, timings):
        self.inputs.append((volume.copy(), spacing))
        timings["network"] = 0.0  # stage-internal timings must not leak into the case timings
        return self.labels


class TumorOracle:
    def __init__(self):
        self.calls = []

    def __call__(self, crop, spacing, timings):
        self.calls.append((crop.copy(), spacing))
        return (crop == TUMOR_HU).astype(np.uint8)


def segmenter(organs, parameters=None, stages=((LIVER, False),), options=None):
    oracles = {organ: TumorOracle() for organ, _ in stages}
    seg = CascadeSegmenter(make_manifest(parameters, stages), options or EngineOptions(),
                           organ_stage=OrganOracle(organs), tumor_stage_fns=oracles)
    return seg, oracles


def readonly(array):
    array = np.array(array)
    array.setflags(write=False)
    return array


# ---------------------------------------------------------------- tumor crops

CROP_SHAPE = (12, 16, 14)
CROP_SPACING = (3.0, 0.75, 1.25)
CROP_PARAMS = {"tumor_margin_cranio_caudal_mm": 7.0, "tumor_margin_in_plane_mm": 2.0, "organ_postprocessing": {}}


def crop_phantom():
    organs = np.zeros(CROP_SHAPE, np.uint8)
    organs[4:7, 5:10, 6:9] = LIVER
    organs[10:12, 0:2, 12:14] = PANCREAS  # in a corner: the box is clamped
    volume = (np.arange(np.prod(CROP_SHAPE)) - 1000.0).reshape(CROP_SHAPE).astype(np.float32)  # unique HU
    return organs, volume


# Margins: 7 mm cranio-caudal, 2 mm in plane, rounded up to whole voxels of each axis' spacing.
AXIS0_CC_BOXES = {LIVER: np.s_[1:10, 2:13, 4:11], PANCREAS: np.s_[7:12, 0:5, 10:14]}  # 3, 3, 2 voxels
AXIS2_CC_BOXES = {LIVER: np.s_[3:8, 2:13, 0:14], PANCREAS: np.s_[9:12, 0:5, 6:14]}  # 1, 3, 6 voxels


@pytest.mark.parametrize("direction, boxes", [
    (HEAD_FIRST, AXIS0_CC_BOXES), (FEET_FIRST, AXIS0_CC_BOXES), (FLIPPED_IN_PLANE, AXIS0_CC_BOXES),
    (PERMUTED, AXIS2_CC_BOXES), (PERMUTED_FEET_FIRST, AXIS2_CC_BOXES)])
def test_tumor_stage_receives_exactly_the_organ_crop_with_mm_margins(direction, boxes):
    organs, volume = crop_phantom()
    geometry = Geometry(CROP_SHAPE, CROP_SPACING, direction=direction)
    seg, oracles = segmenter(organs, CROP_PARAMS, stages=((LIVER, False), (PANCREAS, False)))
    seg.segment(readonly(volume), geometry, {})
    for organ, box in boxes.items():
        [(crop, spacing)] = oracles[organ].calls
        np.testing.assert_array_equal(crop, volume[box])
        assert spacing == CROP_SPACING
        assert organ_crop_box(organs == organ, geometry, CascadeParameters.from_manifest(CROP_PARAMS)) == box


def test_cranio_caudal_axis_follows_the_direction():
    assert cranio_caudal_axis(Geometry(CROP_SHAPE, CROP_SPACING, direction=HEAD_FIRST)) == (0, 1.0)
    assert cranio_caudal_axis(Geometry(CROP_SHAPE, CROP_SPACING, direction=FEET_FIRST)) == (0, -1.0)
    assert cranio_caudal_axis(Geometry(CROP_SHAPE, CROP_SPACING, direction=PERMUTED)) == (2, 1.0)
    assert cranio_caudal_axis(Geometry(CROP_SHAPE, CROP_SPACING, direction=PERMUTED_FEET_FIRST)) == (2, -1.0)
    tilted = np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])  # gantry tilt
    assert cranio_caudal_axis(Geometry(CROP_SHAPE, CROP_SPACING, direction=tuple(tilted.ravel()))) == (0, 1.0)


def test_tumor_output_is_mapped_back_into_the_full_grid():
    organs, _ = crop_phantom()
    organs[:] = 0
    organs[2:10, 3:13, 3:11] = LIVER
    volume = np.full(CROP_SHAPE, 40.0, np.float32)
    volume[4:8, 5:11, 5:10] = TUMOR_HU  # 120 voxels, all on the liver
    geometry = Geometry(CROP_SHAPE, (2.5, 0.8, 0.8), direction=PERMUTED)
    seg, _ = segmenter(organs, {"organ_postprocessing": {}, "tumor_min_total_mm3": 0.0})
    labels = seg.segment(volume, geometry, {})
    expected = organs.copy()
    expected[4:8, 5:11, 5:10] = TUMOR
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.uint8


# ---------------------------------------------------------------- aorta crop in any orientation

CANONICAL_SPACING = (2.5, 1.0, 0.8)  # (z, y, x) of the head-first array


def canonical_organs():
    """Head-first anatomy: index 0 is the most caudal slice."""
    organs = np.zeros((40, 6, 7), np.uint8)
    organs[:, 0:2, 0:2] = LIVER  # a column through every slice shows what the crop keeps
    organs[15:31, 3:5, 3:5] = AORTA  # caudal end at slice 15, cranial end at slice 30
    organs[2:7, 0:2, 5:7] = RIGHT_KIDNEY  # entirely below the crop
    return organs


ORIENTATIONS = {  # name: (direction, to array, back to canonical, spacing permutation)
    "head_first": (HEAD_FIRST, lambda a: a, lambda a: a, (0, 1, 2)),
    "feet_first": (FEET_FIRST, lambda a: a[::-1], lambda a: a[::-1], (0, 1, 2)),
    "flipped_in_plane": (FLIPPED_IN_PLANE, lambda a: a[:, ::-1, ::-1], lambda a: a[:, ::-1, ::-1], (0, 1, 2)),
    "permuted": (PERMUTED, lambda a: a.transpose(2, 1, 0), lambda a: a.transpose(2, 1, 0), (2, 1, 0)),
    "permuted_feet_first": (PERMUTED_FEET_FIRST, lambda a: a.transpose(2, 1, 0)[:, :, ::-1],
                            lambda a: a[:, :, ::-1].transpose(2, 1, 0), (2, 1, 0)),
}


@pytest.mark.parametrize("z_spacing, margin_mm, kept", [(2.5, 10.0, (11, 31)), (5.0, 10.0, (13, 31)),
                                                        (2.5, 50.0, (0, 31)), (2.5, 9.9, (12, 31))])
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_aorta_crop_keeps_the_same_anatomical_slices_in_any_orientation(orientation, z_spacing, margin_mm, kept):
    direction, to_array, to_canonical, permutation = ORIENTATIONS[orientation]
    canonical = canonical_organs()
    spacing = tuple((z_spacing, *CANONICAL_SPACING[1:])[i] for i in permutation)
    organs = np.ascontiguousarray(to_array(canonical))
    geometry = Geometry(organs.shape, spacing, direction=direction)
    seg, _ = segmenter(organs, {"aorta_caudal_margin_mm": margin_mm, "aorta_min_mm3": 1.0,
                                "organ_postprocessing": {}}, stages=())
    labels = seg.segment(np.zeros(organs.shape, np.float32), geometry, {})
    expected = canonical.copy()
    expected[:kept[0]] = 0
    expected[kept[1]:] = 0
    np.testing.assert_array_equal(to_canonical(labels), expected)
    assert seg.last_case_info["aorta_found"]
    crop = seg.last_case_info["z_crop"]
    assert crop["axis"] == permutation.index(0) and crop["stop"] - crop["start"] == kept[1] - kept[0]


def test_no_aorta_skips_the_crop_and_contrast_without_crashing(caplog):
    organs = canonical_organs()
    organs[organs == AORTA] = 0
    organs[30:35, 0:2, 5:7] = LEFT_KIDNEY
    geometry = Geometry(organs.shape, CANONICAL_SPACING)
    seg, oracles = segmenter(organs, {"organ_postprocessing": {}}, stages=ALL_STAGES)
    with caplog.at_level(logging.INFO, logger="inference.cascade.segmenter"):
        labels = seg.segment(np.zeros(organs.shape, np.float32), geometry, {})
    np.testing.assert_array_equal(labels, organs)  # nothing cropped
    info = seg.last_case_info
    assert not info["aorta_found"] and not info["contrast_enhanced"] and info["z_crop"] is None
    assert any("no aorta" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    assert info["tumor_stages_skipped"] == {"right_kidney": "not contrast-enhanced",
                                            "left_kidney": "not contrast-enhanced", "pancreas": "organ absent"}
    assert len(oracles[LIVER].calls) == 1 and not oracles[RIGHT_KIDNEY].calls and not oracles[LEFT_KIDNEY].calls


def test_a_speck_of_aorta_counts_as_no_aorta():
    organs = canonical_organs()
    organs[organs == AORTA] = 0
    organs[20, 3, 3] = AORTA  # 2 mm3 < the 1000 mm3 default
    geometry = Geometry(organs.shape, CANONICAL_SPACING)
    assert aorta_crop(organs, geometry, CascadeParameters()) is None
    assert aorta_crop(organs, geometry, CascadeParameters(aorta_min_mm3=2.0)) == SlabCrop(0, 0, 21)


# ---------------------------------------------------------------- contrast switch

def contrast_phantom(aorta_median: float):
    organs = np.zeros((20, 24, 24), np.uint8)
    organs[2:18, 10:13, 10:13] = AORTA  # 144 voxels
    organs[5:10, 0:5, 0:5] = LIVER
    organs[5:10, 0:5, 18:23] = RIGHT_KIDNEY
    organs[10:15, 18:23, 0:5] = PANCREAS
    organs[10:15, 18:23, 18:23] = LEFT_KIDNEY
    volume = np.full(organs.shape, 40.0, np.float32)
    aorta_hu = np.array([aorta_median - 300] * 71 + [aorta_median] * 2 + [aorta_median + 300] * 71)
    volume[organs == AORTA] = np.random.default_rng(0).permutation(aorta_hu)  # median exactly aorta_median
    return organs, volume


@pytest.mark.parametrize("median, enhanced", [(444.5, False), (445.0, True), (1500.0, True), (100.0, False)])
def test_contrast_switch_toggles_kidney_tumor_stages(median, enhanced):
    organs, volume = contrast_phantom(median)
    seg, oracles = segmenter(organs, {"aorta_min_mm3": 1.0}, stages=ALL_STAGES)
    seg.segment(volume, Geometry(organs.shape, (1.0, 1.0, 1.0)), {})
    info = seg.last_case_info
    assert info["contrast_enhanced"] is enhanced and info["aorta_median_hu"] == pytest.approx(median)
    assert len(oracles[LIVER].calls) == 1 and len(oracles[PANCREAS].calls) == 1
    assert len(oracles[RIGHT_KIDNEY].calls) == len(oracles[LEFT_KIDNEY].calls) == int(enhanced)
    run = ["liver", "right_kidney", "pancreas", "left_kidney"] if enhanced else ["liver", "pancreas"]
    assert info["tumor_stages_run"] == run


# ---------------------------------------------------------------- credible-tumor filters

FILTER_GEOMETRY = Geometry((30, 60, 60), (2.5, 0.8, 0.8))  # the reference voxel: public voxel counts apply


def filter_case(*blocks, organ_box=np.s_[5:25, 10:40, 10:40]):
    organ = np.zeros(FILTER_GEOMETRY.shape, bool)
    organ[organ_box] = True
    tumor = np.zeros(FILTER_GEOMETRY.shape, bool)
    for block in blocks:
        tumor[block] = True
    return tumor, organ


def run_filter(tumor, organ, **overrides):
    before = tumor.copy(), organ.copy()
    result = filter_tumor(readonly(tumor), readonly(organ), FILTER_GEOMETRY, CascadeParameters(**overrides))
    np.testing.assert_array_equal(before[0], tumor)
    return result


def removed(**reasons):
    return {"not_connected": 0, "too_small": 0, "low_overlap": 0, "total_too_small": 0, **reasons}


def test_filter_keeps_a_credible_tumor():
    tumor, organ = filter_case(np.s_[10:15, 20:26, 20:26])  # 180 voxels inside the organ
    result = run_filter(tumor, organ)
    np.testing.assert_array_equal(result.kept, tumor)
    assert result.as_dict() == {"kept": 1, "removed": removed()}


@pytest.mark.parametrize("voxels, kept", [(127, False), (128, True)])
def test_filter_total_too_small(voxels, kept):
    tumor, organ = filter_case(np.s_[10:12, 20:28, 20:28])  # 128 voxels
    if voxels == 127:
        tumor[10, 20, 20] = False
    result = run_filter(tumor, organ)
    assert bool(result.kept.any()) is kept
    assert result.as_dict() == ({"kept": 1, "removed": removed()} if kept
                                else {"kept": 0, "removed": removed(total_too_small=1)})


def test_filter_total_counts_only_kept_components():
    tumor, organ = filter_case(np.s_[10:12, 20:28, 20:27], np.s_[10:12, 2:8, 2:8])  # 112 on organ + 72 far away
    result = run_filter(tumor, organ)
    assert not result.kept.any()
    assert result.as_dict() == {"kept": 0, "removed": removed(not_connected=1, total_too_small=1)}


@pytest.mark.parametrize("voxels, kept", [(31, False), (32, True)])
def test_filter_component_too_small(voxels, kept):
    tumor, organ = filter_case(np.s_[10:15, 20:26, 20:26], np.s_[20:22, 30:34, 30:34])  # 180 + 32 voxels
    if voxels == 31:
        tumor[20, 30, 30] = False
    result = run_filter(tumor, organ, tumor_min_organ_overlap_mm3=0.0)
    assert result.kept[21, 31, 31] is np.bool_(kept)
    assert result.as_dict() == {"kept": 1 + kept, "removed": removed(too_small=int(not kept))}
    assert run_filter(tumor, organ).removed == removed(too_small=int(not kept), low_overlap=int(kept))  # defaults


@pytest.mark.parametrize("overlap, kept", [(79, False), (80, True)])
def test_filter_too_little_overlap(overlap, kept):
    # 4 x 5 x 10 = 200 voxels straddling the organ's x border (x < 40): 4 x 5 x 4 = 80 inside
    tumor, organ = filter_case(np.s_[10:15, 20:26, 20:26], np.s_[16:20, 30:35, 36:46])
    if overlap == 79:
        tumor[16, 30, 36] = False  # an edge voxel: the component stays connected
    result = run_filter(tumor, organ)
    assert result.kept[17, 32, 44] is np.bool_(kept)
    assert result.as_dict() == {"kept": 1 + kept, "removed": removed(low_overlap=int(not kept))}


def test_filter_removes_components_not_connected_to_the_organ():
    tumor, organ = filter_case(np.s_[10:15, 20:26, 20:26], np.s_[10:16, 20:30, 42:50])  # 2 voxels off the organ
    result = run_filter(tumor, organ, tumor_min_organ_overlap_mm3=0.0)
    assert result.kept[12, 22, 22] and not result.kept[12, 25, 45]
    assert result.as_dict() == {"kept": 1, "removed": removed(not_connected=1)}


def test_filter_corner_contact_counts_as_connected():
    tumor, organ = filter_case(np.s_[10:15, 20:26, 20:26], np.s_[25:29, 40:44, 40:44])  # touches (24, 39, 39)
    result = run_filter(tumor, organ, tumor_min_organ_overlap_mm3=0.0)
    assert result.kept[27, 42, 42] and result.kept_components == 2
    result = run_filter(tumor, organ, tumor_min_organ_overlap_mm3=0.0, tumor_require_organ_contact=False)
    assert result.kept_components == 2
    assert run_filter(tumor, organ).removed == removed(low_overlap=1)  # corner contact, 0 overlap


def test_filter_thresholds_are_physical_volumes():
    # the same 128 voxels are 204.8 mm3 at the reference spacing but 102.4 mm3 at half the z spacing
    tumor, organ = filter_case(np.s_[10:12, 20:28, 20:28])
    fine = Geometry(FILTER_GEOMETRY.shape, (1.25, 0.8, 0.8))
    assert filter_tumor(tumor, organ, FILTER_GEOMETRY, CascadeParameters()).kept_components == 1
    only_total = CascadeParameters(tumor_min_component_mm3=0.0, tumor_min_organ_overlap_mm3=0.0)
    assert filter_tumor(tumor, organ, fine, only_total).removed == removed(total_too_small=1)
    assert filter_tumor(tumor, organ, fine, CascadeParameters()).removed == removed(low_overlap=1)  # 160 needed


def test_empty_tumor_output():
    tumor, organ = filter_case()
    result = run_filter(tumor, organ)
    assert not result.kept.any() and result.as_dict() == {"kept": 0, "removed": removed()}


# ---------------------------------------------------------------- merge and the whole cascade

def test_merge_tumor_overrides_organs():
    organs = np.array([[[0, 1, 1, 9, 4]]], np.uint8)
    tumor = np.array([[[True, False, True, True, False]]])
    np.testing.assert_array_equal(merge_tumor(readonly(organs), tumor), [[[14, 1, 14, 14, 4]]])


def end_to_end_phantom():
    organs = np.zeros((24, 40, 40), np.uint8)
    organs[2:22, 18:22, 18:22] = AORTA
    organs[4:16, 2:16, 2:16] = LIVER
    organs[18:20, 2:4, 2:4] = LIVER  # a liver fragment: removed by the largest-component rule
    organs[4:10, 26:36, 26:36] = PANCREAS
    organs[6:8, 10:13, 14:16] = GALLBLADDER  # inside the liver's box
    volume = np.full(organs.shape, 40.0, np.float32)
    volume[organs == AORTA] = 150.0  # not enhanced
    volume[6:10, 4:10, 4:10] = TUMOR_HU  # liver tumor, 144 voxels inside the liver
    volume[6:8, 9:14, 9:16] = TUMOR_HU  # ... with a side lobe over the gallbladder (same component)
    volume[10:14, 0:2, 4:12] = TUMOR_HU  # 64 voxels touching the liver from outside, no overlap: removed
    volume[5:9, 28:34, 28:34] = TUMOR_HU  # pancreas tumor, 144 voxels
    volume[18:20, 2:4, 2:4] = TUMOR_HU  # on the removed liver fragment: not connected any more
    return organs, volume


def test_end_to_end_merge_postprocessing_timings_and_case_info():
    organs, volume = end_to_end_phantom()
    volume = readonly(volume)
    seg, oracles = segmenter(organs, {"aorta_min_mm3": 1.0}, stages=ALL_STAGES)
    timings = {}
    labels = seg.segment(volume, Geometry(organs.shape, (2.5, 0.8, 0.8)), timings)
    expected = organs.copy()
    expected[18:20, 2:4, 2:4] = 0
    expected[6:10, 4:10, 4:10] = TUMOR
    expected[6:8, 9:14, 9:16] = TUMOR  # over liver, gallbladder and background alike
    expected[5:9, 28:34, 28:34] = TUMOR
    np.testing.assert_array_equal(labels, expected)
    assert set(timings) == {"organ_network", "postprocess", "aorta_crop", "tumor_liver", "tumor_pancreas", "merge"}
    info = seg.last_case_info
    assert info["tumor_stages_run"] == ["liver", "pancreas"]
    assert info["tumor_components"] == {  # crops also see other hosts' tumors: not connected to their organ
        "liver": {"kept": 1, "removed": removed(not_connected=2, low_overlap=1)},
        "pancreas": {"kept": 1, "removed": removed(not_connected=2)}}  # the fragment's is outside its crop
    assert info["z_crop"] == {"axis": 0, "start": 0, "stop": 22} and not info["contrast_enhanced"]
    assert info["stage_seconds"]["organ"] == {"network": 0.0}
    organ_input, spacing = seg.organ_stage.inputs[0]
    np.testing.assert_array_equal(organ_input, volume)
    assert spacing == (2.5, 0.8, 0.8)


def test_input_is_hu_sanitised_and_never_modified():
    organs, volume = end_to_end_phantom()
    volume[0, 0, 0], volume[0, 0, 1] = -32768.0, 5000.0
    volume = readonly(volume)
    before = volume.copy()
    seg, _ = segmenter(organs, stages=())
    seg.segment(volume, Geometry(organs.shape, (2.5, 0.8, 0.8)), {})
    np.testing.assert_array_equal(volume, before)
    organ_input = seg.organ_stage.inputs[0][0]
    assert organ_input[0, 0, 0] == -1024.0 and organ_input[0, 0, 1] == 3071.0


def test_unknown_parameter_keys_are_rejected_with_the_allowed_names():
    with pytest.raises(ValueError, match=r"unknown cascade parameter\(s\) \['aorta_margin'\]; allowed: .*"
                                         r"aorta_caudal_margin_mm.*contrast_hu_threshold"):
        CascadeParameters.from_manifest({"aorta_margin": 20})
    with pytest.raises(ManifestError, match="aorta_margin"):
        segmenter(np.zeros((2, 2, 2), np.uint8), {"aorta_margin": 20})
    with pytest.raises(ManifestError, match="non-negative number"):
        segmenter(np.zeros((2, 2, 2), np.uint8), {"contrast_hu_threshold": "high"})


def test_parameter_defaults_and_manifest_rules():
    params = CascadeParameters.from_manifest({"organ_postprocessing": {"1": {"largest_only": True}}})
    assert params.organ_postprocessing == {1: ComponentRule(largest_only=True)}  # replaces the defaults
    defaults = CascadeParameters.from_manifest({})
    assert (defaults.aorta_caudal_margin_mm, defaults.contrast_hu_threshold) == (50.0, 445.0)
    assert (defaults.tumor_min_total_mm3, defaults.tumor_min_component_mm3,
            defaults.tumor_min_organ_overlap_mm3) == (204.8, 51.2, 128.0)
    rules = defaults.organ_postprocessing
    assert rules[1].largest_only and rules[2].min_fraction_of_largest == 0.1


def test_stage_output_errors_are_clear():
    organs, volume = end_to_end_phantom()
    geometry = Geometry(organs.shape, (2.5, 0.8, 0.8))
    seg = CascadeSegmenter(make_manifest(), organ_stage=OrganOracle(organs),
                           tumor_stage_fns={LIVER: lambda crop, spacing, t: np.full(crop.shape, 14, np.uint8)})
    with pytest.raises(ValueError, match=r"tumor stage for liver returned uint8 labels in \[14, 14\]"):
        seg.segment(volume, geometry, {})
    seg = CascadeSegmenter(make_manifest(), organ_stage=lambda v, s, t: np.zeros((2, 2, 2), np.uint8),
                           tumor_stage_fns={LIVER: TumorOracle()})
    with pytest.raises(ValueError, match="organ stage returned shape"):
        seg.segment(volume, geometry, {})
    seg = CascadeSegmenter(make_manifest(), organ_stage=lambda v, s, t: np.full(v.shape, 14, np.int64),
                           tumor_stage_fns={LIVER: TumorOracle()})
    with pytest.raises(ValueError, match=r"organ stage returned int64 labels in \[14, 14\]; expected integers 0..13"):
        seg.segment(volume, geometry, {})
    with pytest.raises(ValueError, match="tumor_stage_fns serve organs"):
        CascadeSegmenter(make_manifest(), organ_stage=OrganOracle(organs), tumor_stage_fns={})


def test_gpu_cache_is_released_after_every_stage(monkeypatch):
    released = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: released.append(1))
    organs, volume = end_to_end_phantom()
    seg, _ = segmenter(organs, {"aorta_min_mm3": 1.0}, stages=ALL_STAGES,
                       options=EngineOptions(device=torch.device("cuda")))
    seg.segment(volume, Geometry(organs.shape, (2.5, 0.8, 0.8)), {})
    assert len(released) == 3  # organ, liver tumor, pancreas tumor (kidneys skipped: not enhanced)
    cascade_module.release_gpu_cache(torch.device("cpu"))
    assert len(released) == 3


def test_real_models_are_wired_from_the_manifest(tmp_path):
    from tests.factories import make_model_folder
    organ = make_model_folder(tmp_path / "organ", bias_class=1)
    tumor = make_model_folder(tmp_path / "tumor_liver", labels={"background": 0, "tumor": 1})
    manifest = Manifest(tmp_path, organ, (TumorStage(LIVER, tumor),), {"aorta_min_mm3": 1.0})
    seg = CascadeSegmenter(manifest, EngineOptions())
    volume = np.random.default_rng(0).normal(40, 100, (16, 40, 36)).astype(np.float32)
    timings = {}
    labels = seg.segment(volume, Geometry(volume.shape, (2.5, 1.6, 1.6)), timings)
    assert labels.shape == volume.shape and labels.dtype == np.uint8 and labels.max() <= TUMOR
    assert {"organ_network", "postprocess", "aorta_crop", "merge"} <= set(timings)
    wrong = Manifest(tmp_path, organ, (TumorStage(LIVER, organ),), {})
    with pytest.raises(ManifestError, match="a tumor model must have labels"):
        CascadeSegmenter(wrong, EngineOptions())


def test_a_tumor_model_that_fails_to_load_in_the_background_fails_its_cases(tmp_path):
    """Tumor weights load on a thread during the organ stage: a network that does not fit its
    plans cannot stop the start, but every case that reaches its stage fails, naming the folder."""
    import shutil

    from inference.engine.model import ModelError
    from tests.factories import make_model_folder
    organ = make_model_folder(tmp_path / "organ", bias_class=1)
    tumor = make_model_folder(tmp_path / "tumor_liver", labels={"background": 0, "tumor": 1})
    shutil.copy(organ / "fold_all" / "checkpoint_final.pth", tumor / "fold_all" / "checkpoint_final.pth")
    manifest = Manifest(tmp_path, organ, (TumorStage(LIVER, tumor),), {"aorta_min_mm3": 1.0})
    volume = np.random.default_rng(0).normal(40, 100, (16, 40, 36)).astype(np.float32)
    organs = np.zeros(volume.shape, np.uint8)
    organs[4:12, 10:30, 8:28] = LIVER  # a credible liver (one everywhere is skipped as implausible)
    seg = CascadeSegmenter(manifest, EngineOptions(), organ_stage=OrganOracle(organs))
    for _ in range(2):
        with pytest.raises(ModelError, match="tumor_liver: weights do not match"):
            seg.segment(volume, Geometry(volume.shape, (2.5, 1.6, 1.6)), {})
