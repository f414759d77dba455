"""Label merging, organ crops and tumor pseudo-label credibility (training/labels.py, training/tumor_data.py),
and the presets: pure functions on small arrays."""
from __future__ import annotations

import math

import numpy as np
import pytest

from inference.cascade.parameters import REFERENCE_SPACING_MM, CascadeParameters
from inference.core.geometry import Geometry
from phantom import make_phantom
from training.label_merging import infer_annotated, merge_labels, organ_target
from training.presets import (DEMO, PAPER, PUBLIC_PSEUDO_TUMOR_MIN_MM3, SMOKE, apply_overrides, get_preset,
                              scaled_cascade)
from training.tumor_data import credible_pseudo_tumor, organ_crop

LIVER, RKIDNEY, PANCREAS, AORTA, DUODENUM, LKIDNEY, TUMOR = 1, 2, 4, 5, 12, 13, 14


def box(shape, *ranges):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in ranges)] = True
    return mask


# ------------------------------------------------------------------ merge_labels


def test_real_label_wins_and_pseudo_fills_only_unannotated_classes():
    real = np.zeros((4, 6, 6), np.uint8)
    real[:, :3, :3] = LIVER
    pseudo = np.zeros_like(real)
    pseudo[:, :4, :4] = LIVER  # disagrees with the real liver outline: real wins (background stays)
    pseudo[:, 4:, 4:] = AORTA  # aorta not annotated: filled
    pseudo[:, 3, 5] = LKIDNEY  # left kidney annotated (and absent): not filled
    merged = merge_labels(real, annotated=(LIVER, LKIDNEY), pseudo=pseudo)
    assert merged.dtype == np.uint8
    assert np.array_equal(merged == LIVER, real == LIVER)
    assert np.array_equal(merged == AORTA, pseudo == AORTA)
    assert not (merged == LKIDNEY).any()
    assert (merged[:, 3, 3] == 0).all()  # pseudo liver outside the real liver


def test_partial_case_with_pseudo_labels_is_completed():
    real = np.zeros((3, 5, 5), np.uint8)
    real[0] = RKIDNEY
    pseudo = np.full_like(real, PANCREAS)
    pseudo[0] = LIVER  # under an annotated kidney: the real label wins
    merged = merge_labels(real, annotated=(RKIDNEY,), pseudo=pseudo)
    assert (merged[0] == RKIDNEY).all() and (merged[1:] == PANCREAS).all()


def test_unlabeled_case_takes_the_pseudo_labels_and_full_case_ignores_them():
    pseudo = np.random.default_rng(0).integers(0, 14, (3, 4, 4)).astype(np.uint8)
    assert np.array_equal(merge_labels(np.zeros_like(pseudo), (), pseudo), pseudo)
    real = np.random.default_rng(1).integers(0, 15, (3, 4, 4)).astype(np.uint8)
    assert np.array_equal(merge_labels(real, range(1, 15), pseudo), real)


def test_merge_rejects_labels_the_case_does_not_annotate_and_shape_mismatch():
    real = np.full((2, 2, 2), AORTA, np.uint8)
    with pytest.raises(ValueError, match="does not annotate"):
        merge_labels(real, (LIVER,), np.zeros_like(real))
    with pytest.raises(ValueError, match="shape"):
        merge_labels(real, (AORTA,), np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="1..14"):
        merge_labels(real, (AORTA, 15), np.zeros_like(real))


def test_infer_annotated_takes_the_labels_present():
    labels = np.zeros((2, 3, 3), np.uint8)
    labels[0, 0, 0], labels[1, 1, 1] = TUMOR, PANCREAS
    assert infer_annotated(labels) == (PANCREAS, TUMOR)
    assert infer_annotated(np.zeros((2, 2, 2), np.uint8)) == ()


# ------------------------------------------------------------------ tumor -> host organ


def test_tumor_inside_an_organ_takes_the_organ_label():
    labels = np.zeros((10, 12, 12), np.uint8)
    labels[box(labels.shape, (1, 9), (1, 11), (1, 11))] = LIVER
    labels[box(labels.shape, (3, 6), (3, 6), (3, 6))] = TUMOR
    target = organ_target(labels)
    assert target.max() <= 13 and target.dtype == np.uint8
    assert (target[3:6, 3:6, 3:6] == LIVER).all()


def test_tumor_host_prefers_tumor_bearing_organs_over_neighbours():
    # a pancreatic tumor touching the duodenum on more voxels than the pancreas: still the pancreas's
    labels = np.zeros((8, 16, 16), np.uint8)
    labels[:, :, :6] = PANCREAS
    labels[:, :, 9:] = DUODENUM
    labels[2:6, 4:10, 6:9] = TUMOR
    target = organ_target(labels)
    assert (target[2:6, 4:10, 6:9] == PANCREAS).all()
    assert (target[labels == DUODENUM] == DUODENUM).all()


def test_tumor_only_case_maps_tumor_to_host_from_pseudo_labels():
    """Tumor-only annotation: organs come from pseudo labels; the tumor goes to the organ the
    pseudo labels put under and around it, each component on its own."""
    real = np.zeros((8, 20, 20), np.uint8)
    real[2:5, 2:6, 2:6] = TUMOR  # in the liver
    real[2:5, 12:16, 12:16] = TUMOR  # in the left kidney
    pseudo = np.zeros_like(real)
    pseudo[:, :10, :10] = LIVER
    pseudo[:, 10:, 10:] = LKIDNEY
    merged = merge_labels(real, (TUMOR,), pseudo)
    assert (merged == TUMOR).sum() == (real == TUMOR).sum()
    target = organ_target(merged, pseudo=pseudo)
    assert (target[2:5, 2:6, 2:6] == LIVER).all() and (target[2:5, 12:16, 12:16] == LKIDNEY).all()
    assert not (target == TUMOR).any()


def test_tumor_without_any_organ_around_becomes_background():
    labels = np.zeros((5, 5, 5), np.uint8)
    labels[1:3, 1:3, 1:3] = TUMOR
    assert not organ_target(labels).any()


# ------------------------------------------------------------------ organ crops


def test_organ_crop_margins_in_mm_on_anisotropic_spacing():
    shape, spacing = (40, 60, 60), (5.0, 1.0, 2.0)
    geometry = Geometry(shape, spacing, origin=(10.0, 20.0, 30.0))
    params = CascadeParameters(tumor_margin_cranio_caudal_mm=12.0, tumor_margin_in_plane_mm=6.0)
    organs = np.zeros(shape, np.uint8)
    organs[10:20, 20:30, 25:35] = LIVER
    organs[14:16, 22:24, 27:29] = LIVER  # tumor voxels carry the host organ (organ_target)
    organs[30:33, 40:45, 40:45] = LKIDNEY
    tumor = np.zeros(shape, bool)
    tumor[14:16, 22:24, 27:29] = True
    tumor[31, 42, 42] = True  # the left kidney's tumor: background in the liver crop
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    crop = organ_crop(image, organs, tumor, LIVER, geometry, params)
    # z: ceil(12 / 5) = 3 slices; y: 6 / 1 = 6; x: 6 / 2 = 3 voxels
    assert crop.box == (slice(7, 23), slice(14, 36), slice(22, 38))
    assert np.array_equal(crop.image, image[crop.box])
    assert crop.target.dtype == np.uint8 and crop.tumor_voxels == 8
    assert crop.geometry.shape == (16, 22, 16) and crop.geometry.spacing == spacing
    assert np.allclose(crop.geometry.origin, geometry.index_to_physical((7, 14, 22)))
    kidney = organ_crop(image, organs, tumor, LKIDNEY, geometry, params)
    assert kidney.box[0] == slice(27, 36) and kidney.tumor_voxels == 1  # clamped at the volume's end
    assert organ_crop(image, organs, tumor, PANCREAS, geometry, params) is None


def test_organ_crop_margin_follows_the_head_feet_axis_not_array_axis_0():
    # a volume stored with the patient's z along array axis 2: the cranio-caudal margin goes there
    direction = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0)  # array x (axis 2) runs along physical z
    geometry = Geometry((20, 20, 20), (1.0, 1.0, 1.0), direction=direction)
    params = CascadeParameters(tumor_margin_cranio_caudal_mm=5.0, tumor_margin_in_plane_mm=2.0)
    organs = np.zeros((20, 20, 20), np.uint8)
    organs[8:12, 8:12, 8:12] = LIVER
    crop = organ_crop(np.zeros((20, 20, 20), np.float32), organs, np.zeros((20, 20, 20), bool), LIVER, geometry, params)
    assert crop.box == (slice(6, 14), slice(6, 14), slice(3, 17))


# ------------------------------------------------------------------ credible tumor pseudo labels


REFERENCE = Geometry((40, 120, 120), REFERENCE_SPACING_MM)  # 1.6 mm3 voxels: the public voxel counts hold


def test_public_threshold_is_2048_voxels_at_the_reference_spacing():
    organs = np.full((40, 120, 120), LIVER, np.uint8)
    tumor = np.zeros(organs.shape, bool)
    tumor[5:13, 10:26, 10:26] = True  # 8 * 16 * 16 = 2048 voxels: kept
    tumor[20:28, 10:26, 10:25] = True  # 1920 voxels: too small
    result = credible_pseudo_tumor(tumor, organs, LIVER, REFERENCE, PUBLIC_PSEUDO_TUMOR_MIN_MM3)
    assert result.kept_components == 1 and int(result.kept.sum()) == 2048
    assert result.kept[5:13, 10:26, 10:26].all() and not result.kept[20:28].any()
    assert result.removed == {"too_small": 1, "no_owner": 0, "other_owner": 0}
    exact = np.zeros_like(tumor)
    exact[0:8, 0:16, 0:16] = True
    exact[0, 0, 0] = False  # 2047 voxels
    assert credible_pseudo_tumor(exact, organs, LIVER, REFERENCE, PUBLIC_PSEUDO_TUMOR_MIN_MM3).kept_components == 0


def test_bounding_box_owner_must_be_the_intended_organ():
    organs = np.zeros((40, 120, 120), np.uint8)
    organs[:, :60] = LIVER
    organs[:, 60:] = RKIDNEY
    tumor = np.zeros(organs.shape, bool)
    tumor[2:12, 20:40, 20:40] = True  # inside the liver: owner liver
    tumor[20:30, 62:90, 20:40] = True  # mostly in the right kidney: owner right kidney
    liver = credible_pseudo_tumor(tumor, organs, LIVER, REFERENCE, 100.0)
    assert liver.kept_components == 1 and liver.kept[2:12, 20:40, 20:40].all() and not liver.kept[20:30].any()
    assert liver.removed["other_owner"] == 1
    kidney = credible_pseudo_tumor(tumor, organs, RKIDNEY, REFERENCE, 100.0)
    assert kidney.kept_components == 1 and kidney.kept[20:30, 62:90, 20:40].all()
    assert kidney.as_dict()["kept_voxels"] == 10 * 28 * 20


def test_component_whose_box_holds_no_organ_is_rejected():
    organs = np.zeros((20, 40, 40), np.uint8)
    organs[:, :, :10] = LIVER
    tumor = box(organs.shape, (2, 18), (2, 38), (15, 38))
    result = credible_pseudo_tumor(tumor, organs, LIVER, REFERENCE, 1.0)
    assert result.kept_components == 0 and result.removed["no_owner"] == 1 and not result.kept.any()


def test_credibility_with_no_prediction_and_mismatched_shapes():
    organs = np.full((4, 4, 4), LIVER, np.uint8)
    empty = credible_pseudo_tumor(np.zeros((4, 4, 4), bool), organs, LIVER, REFERENCE, 1.0)
    assert empty.kept_components == 0 and empty.kept.shape == (4, 4, 4)
    with pytest.raises(ValueError, match="shape"):
        credible_pseudo_tumor(np.zeros((4, 4, 5), bool), organs, LIVER, REFERENCE, 1.0)


# ------------------------------------------------------------------ presets


def test_paper_preset_is_the_papers_tables_2_and_3():
    assert PAPER.organ.patch_size == (96, 160, 160) and PAPER.organ.batch_size == 2
    assert PAPER.tumor.patch_size == (56, 112, 176) and PAPER.tumor.batch_size == 4
    for net in (PAPER.organ_first, PAPER.organ, PAPER.tumor):
        assert (net.epochs, net.iterations_per_epoch, net.initial_lr) == (1000, 250, 0.01)
        assert net.optimizer == "sgd" and net.augmentation  # nnU-Net's own trainer, as in the paper
        assert net.spacing is None and net.features_per_stage is None  # nnU-Net's planner decides
    assert PAPER.tumor_organs == (1, 4, 2, 13) and PAPER.data is None
    assert PAPER.pseudo_tumor_min_mm3 == pytest.approx(2048 * 1.6)
    assert PAPER.cascade_parameters() == CascadeParameters()


def test_demo_covers_the_four_tumor_organs_and_scales_physical_parameters():
    assert DEMO.tumor_organs == (1, 4, 2, 13) and DEMO.use_real_ct
    params = DEMO.cascade_parameters()
    # the switch is off for the phantoms: even a plain-phase aorta passes it, so the kidney models run
    plain = make_phantom(11, phase="plain")
    assert np.median(plain.image[plain.labels == 5]) >= params.contrast_hu_threshold
    assert PAPER.cascade_parameters().contrast_hu_threshold == 445.0
    assert params.tumor_margin_in_plane_mm == pytest.approx(CascadeParameters().tumor_margin_in_plane_mm * 0.3)
    assert scaled_cascade(1.0)["tumor_min_total_mm3"] == pytest.approx(CascadeParameters().tumor_min_total_mm3)
    assert SMOKE.organ.iterations == 2 and SMOKE.tumor.iterations == 2


def test_overrides_replace_fields_and_name_mistakes():
    preset = apply_overrides(get_preset("demo"), ["tumor.epochs=3", "tumor.patch_size=[16,32,32]",
                                                  "cascade.contrast_hu_threshold=400", "use_real_ct=false",
                                                  "data.n_unlabeled=2"])
    assert preset.tumor.epochs == 3 and preset.tumor.patch_size == (16, 32, 32)
    assert preset.cascade["contrast_hu_threshold"] == 400 and not preset.use_real_ct and preset.data.n_unlabeled == 2
    assert DEMO.tumor.epochs != 3  # frozen original untouched
    with pytest.raises(ValueError, match="unknown field"):
        apply_overrides(DEMO, ["tumor.epoch=3"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides(DEMO, ["tumor.epochs"])
    with pytest.raises(ValueError, match="no 'data' section"):
        apply_overrides(PAPER, ["data.n_labeled=3"])
    with pytest.raises(ValueError, match="unknown cascade parameter"):
        apply_overrides(DEMO, ["cascade.contrast=3"])
    with pytest.raises(ValueError, match="epochs"):
        apply_overrides(DEMO, ["organ.epochs=0"])
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("fast")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        apply_overrides(DEMO, ["organ.optimizer=rmsprop"])
    assert apply_overrides(DEMO, ["organ.optimizer=sgd"]).organ.optimizer == "sgd"
    assert math.isclose(apply_overrides(DEMO, ["pseudo_tumor_min_mm3=5"]).pseudo_tumor_min_mm3, 5)
