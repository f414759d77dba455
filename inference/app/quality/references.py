"""Reference values the quality rules compare a label map with, each with its source.

The rules catch segmentations a reader should look at before trusting them; a flag says "look",
not "wrong": a real splenomegaly or a nephrectomy raises one too, and a reader wants to see those.
Bands are therefore the published healthy ranges, not tight percentiles.

Absolute adult organ volumes (whole organ in the field of view):
- liver 0.6-2.5 L. Feng LM et al., "New formula for predicting standard liver volume in Chinese
  adults", World J Gastroenterol 2017;23(27):4968-4977, doi:10.3748/wjg.v23.i27.4968: CT liver
  volume of 369 adults 1205 +- 258 mL, range 594-2250 mL. Heinemann A et al., "Standard liver
  volume in the Caucasian population", Liver Transpl Surg 1999;5(5):366-368: 1332 autopsy livers,
  volume (mL) = 1072.8 x body surface area (m2) - 345.7, i.e. 1.16-2.23 L for 1.4-2.4 m2.
- spleen 0.1-0.5 L. Prassopoulos P et al., "Determination of normal splenic volume on computed
  tomography in relation to age, gender and body habitus", Eur Radiol 1997;7(2):246-248: 140
  adults, mean 214.6 mL, range 107.2-314.5 mL. Caglar V et al., Folia Morphol 2014;73(3),
  doi:10.5603/FM.2014.0038: CT of 212 adults, 198 +- 88 mL (0.5 L is the mean + 3.5 SD).
- each kidney 0.09-0.3 L. Dabers T et al., "Age- and sex-specific reference values for renal
  volume ... an MRI-based study", J Clin Med 2024;13(3):769, doi:10.3390/jcm13030769 (SHIP-TREND,
  1815 adults without kidney disease): right kidney median 138 mL (women) and 174 mL (men), 5th
  percentile 92-134 mL across age and sex groups (0.09 L lies below all of them), men's upper
  quartile up to 206 mL (0.3 L lies above the upper Tukey fence, Q3 + 1.5 IQR, about 0.26 L).

Left/right kidney asymmetry: Cho JM et al., "Associations of MRI-derived kidney volume ... in
about 38 000 UK Biobank participants", Clin Kidney J 2024;17(4):sfae068,
doi:10.1093/ckj/sfae068: the larger kidney is a median 1.08-fold the smaller (IQR 1.04-1.15);
a ratio above 2 is far outside that spread.
"""
from __future__ import annotations

from dataclasses import dataclass

from inference.core.labels import TUMOR_LABEL

LIVER, RIGHT_KIDNEY, SPLEEN, PANCREAS, AORTA, IVC = 1, 2, 3, 4, 5, 6
RIGHT_ADRENAL, LEFT_ADRENAL, GALLBLADDER, ESOPHAGUS, STOMACH, DUODENUM, LEFT_KIDNEY = 7, 8, 9, 10, 11, 12, 13
TUMOR = TUMOR_LABEL
KIDNEYS = (RIGHT_KIDNEY, LEFT_KIDNEY)


@dataclass(frozen=True)
class Band:
    low: float
    high: float
    unit: str
    source: str

    def describe(self) -> str:
        return f"{self.low:g}-{self.high:g} {self.unit} ({self.source})"


_KIDNEY_L = Band(0.09, 0.3, "L", "Dabers 2024, adult MRI")
ADULT_VOLUME_L: dict[int, Band] = {
    LIVER: Band(0.6, 2.5, "L", "Feng 2017 CT; Heinemann 1999"),
    SPLEEN: Band(0.1, 0.5, "L", "Prassopoulos 1997 CT; Caglar 2014"),
    RIGHT_KIDNEY: _KIDNEY_L,
    LEFT_KIDNEY: _KIDNEY_L,
}

# An adult-sized body: the absolute volumes above apply only to adults. Adult abdomens are
# about 280-400 mm wide; 250 mm excludes children up to about ten years (and the project's
# shrunken training phantoms, 70-150 mm), for which only the size-free rules below apply.
ADULT_BODY_WIDTH_MM = 250.0

# Size-free rule: an organ's volume as a share of the body volume in the slices it spans. It
# scales with the patient and holds for partial scans of the body. Expected values follow from
# the volumes above and adult abdominal cross-sections (a 1.5-L liver over a 16-cm span of a
# 600-cm2 abdomen: about 0.15); measured 0.12 (liver), 0.039 (spleen), 0.019-0.023 (kidneys) on
# the teacher labels of the real CT in ../shared/data/real and 0.10-0.16, 0.022-0.035,
# 0.010-0.022 on the phantom anatomy. The bands are two to three times wider than that spread.
BODY_SHARE = {
    LIVER: Band(0.05, 0.30, "of body volume in its slices", "adult volumes over abdominal cross-section"),
    SPLEEN: Band(0.008, 0.10, "of body volume in its slices", "adult volumes over abdominal cross-section"),
    RIGHT_KIDNEY: Band(0.005, 0.05, "of body volume in its slices", "adult volumes over abdominal cross-section"),
    LEFT_KIDNEY: Band(0.005, 0.05, "of body volume in its slices", "adult volumes over abdominal cross-section"),
}
KIDNEY_RATIO_MAX = 2.0  # larger / smaller kidney, Cho 2024 (median 1.08, IQR 1.04-1.15)

# Pieces: solid organs are one piece; a second large piece can be a cut through a thin part
# (pancreas body, duodenum at the pancreatic head), a third is a split segmentation.
MAX_PIECES = 2
MAX_PIECES_TUBULAR = 3  # vessels, oesophagus, stomach and duodenum fold in and out of a slice
TUBULAR = (AORTA, IVC, ESOPHAGUS, STOMACH, DUODENUM)
MAX_OUTSIDE_BODY_SHARE = 0.1  # organ voxels outside the body outline (partial volume at the skin: a few %)

# Tumours. Kidney and pancreas tumours are usually single; multifocal renal tumours are a
# minority even in hereditary syndromes, so more than 3 separate lesions in one kidney or in the
# pancreas is an outlier. Liver metastases can be many; past 10 reports stop counting
# ("innumerable") and a segmentation that scatters false lesions reaches such counts first.
MAX_TUMORS_PER_HOST = {LIVER: 10}
MAX_TUMORS_DEFAULT = 3
MAX_TUMOR_SHARE_OF_HOST = 0.5  # tumour volume / (tumour + host organ): the organ mostly replaced

# Where organs lie, for "missing although the field of view covers it" (heights along head-feet):
# the adrenal glands cap the upper kidney poles and reach about 10-20 mm above them; the pancreas
# lies at the level of the renal hila, between the kidneys' poles; the liver overlies the upper
# right kidney and the spleen the upper left one; the stomach lies beside the spleen; the
# duodenum frames the pancreatic head; aorta and vena cava run past both kidneys; the oesophagus
# enters the abdomen at the level of the liver dome. The gallbladder is never expected: it is
# removed in many adults (cholecystectomy).
ADRENAL_ABOVE_KIDNEY_MM = 10.0

# Side of the body midline where an organ's centroid lies (-1 the patient's right, +1 the left):
# the liver and the gallbladder in its fossa on the right, spleen and stomach on the left; the
# pancreas lies across the spine, between the kidneys. (Situs inversus, about 1 in 10 000, is
# flagged too: a reader should see it.)
SIDE_OF_MIDLINE = {LIVER: -1.0, GALLBLADDER: -1.0, SPLEEN: 1.0, STOMACH: 1.0}
ESOPHAGUS_ABOVE_LIVER_MM = 30.0
