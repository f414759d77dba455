"""Coded concepts of the 14 labels for DICOM SEG segment descriptions.

Every code is pydicom's own (pydicom.sr.codedict, generated from the DICOM standard's context
groups), none typed in by hand: segmented property categories from CID 7150 (Segmentation
Property Categories: "Anatomical Structure" 91723000, "Morphologically Abnormal Structure"
49755003), property types from CID 7151 (Segmentation Property Types: the organs, "Neoplasm"
108369006 for the tumour label) and, for paired organs, the laterality modifier from CID 244
("Right" 24028007, "Left" 7771000) in the Segmented Property Type Modifier Code Sequence, as
dcmqi and TotalSegmentator's DICOM SEG export code left and right kidneys and adrenal glands.
tests/test_dicom_seg.py checks each code's SNOMED CT value and its context group.
"""
from __future__ import annotations

from dataclasses import dataclass

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code


@dataclass(frozen=True)
class SegmentCode:
    category: Code
    property_type: Code
    modifier: Code | None = None  # laterality of a paired organ
    colour_rgb: tuple[int, int, int] = (128, 128, 128)


_ORGAN = codes.SCT.AnatomicalStructure
SEGMENT_CODES: dict[int, SegmentCode] = {
    1: SegmentCode(_ORGAN, codes.SCT.Liver, None, (221, 130, 101)),
    2: SegmentCode(_ORGAN, codes.SCT.Kidney, codes.SCT.Right, (185, 102, 83)),
    3: SegmentCode(_ORGAN, codes.SCT.Spleen, None, (157, 108, 162)),
    4: SegmentCode(_ORGAN, codes.SCT.Pancreas, None, (249, 180, 111)),
    5: SegmentCode(_ORGAN, codes.SCT.Aorta, None, (224, 97, 76)),
    6: SegmentCode(_ORGAN, codes.SCT.InferiorVenaCava, None, (0, 151, 206)),
    7: SegmentCode(_ORGAN, codes.SCT.AdrenalGland, codes.SCT.Right, (244, 214, 49)),
    8: SegmentCode(_ORGAN, codes.SCT.AdrenalGland, codes.SCT.Left, (244, 214, 49)),
    9: SegmentCode(_ORGAN, codes.SCT.Gallbladder, None, (139, 150, 98)),
    10: SegmentCode(_ORGAN, codes.SCT.Esophagus, None, (211, 171, 143)),
    11: SegmentCode(_ORGAN, codes.SCT.Stomach, None, (216, 132, 105)),
    12: SegmentCode(_ORGAN, codes.SCT.Duodenum, None, (255, 253, 229)),
    13: SegmentCode(_ORGAN, codes.SCT.Kidney, codes.SCT.Left, (185, 102, 83)),
    14: SegmentCode(codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm, None, (255, 0, 0)),
}
