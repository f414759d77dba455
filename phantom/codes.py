"""Voxel class codes of the phantom (organ codes 1..13 equal their FLARE label), their HU per
contrast phase and texture amplitudes, and the phases and fields of view a phantom can have.
"""
from __future__ import annotations


PHASES = ("plain", "arterial", "venous")
FOVS = ("abdomen", "chest-abdomen", "abdomen-pelvis", "full")
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

# Nominal (unscaled, adult) z centre of each scan range; anatomy z=0 is about the renal hilum (L1-L2).
FOV_CENTRE_Z = {"abdomen": 10.0, "chest-abdomen": 95.0, "abdomen-pelvis": -90.0, "full": -30.0}
MAX_TUMORS_PER_HOST = 3
TUMOR_CANDIDATES = 24

# ---- voxel class codes (uint8); organ codes 1..13 equal their FLARE label ------------------------
AIR = 0
SUBFAT, MUSCLE, CAVITY, THORAX, DIAPH, MEDIAST, LUNG = 20, 21, 22, 23, 24, 25, 26
CORTEX, MARROW, DISC, CSF, RIB, HEART, BOWEL, GAS = 27, 28, 29, 30, 31, 32, 33, 34
PORTAL, VEIN, ARTERY, BLADDER, YELLOW_MARROW = 35, 36, 37, 38, 39
KID_R_MED, KID_L_MED, STOM_FLUID, STOM_GAS, DUOD_LUMEN, LIVER_VESSEL = 40, 41, 42, 43, 44, 45
TUMOR_CODE0 = 64  # tumour i: 64 + 2i solid part, 65 + 2i necrotic core

SUB_CODE_LABEL = {KID_R_MED: 2, KID_L_MED: 13, STOM_FLUID: 11, STOM_GAS: 11, DUOD_LUMEN: 12, LIVER_VESSEL: 1}
HOST_CODES = {1: (1, LIVER_VESSEL), 2: (2, KID_R_MED), 4: (4,), 13: (13, KID_L_MED)}

# (plain, arterial, venous) HU; "A" entries are filled from the seeded aortic values.
PHASE_HU = {
    AIR: (-1000, -1000, -1000), SUBFAT: (-105, -105, -105), MUSCLE: (50, 58, 62), CAVITY: (-95, -95, -95),
    THORAX: (-850, -850, -850), DIAPH: (50, 58, 62), MEDIAST: (-90, -90, -90), LUNG: (-850, -850, -850),
    CORTEX: (900, 900, 900), MARROW: (420, 420, 420), DISC: (90, 90, 90), CSF: (12, 12, 12),
    RIB: (600, 600, 600), BOWEL: (35, 75, 85), GAS: (-930, -930, -930), PORTAL: (40, 130, 180),
    VEIN: (40, 100, 160), BLADDER: (8, 8, 10), YELLOW_MARROW: (-40, -40, -40),
    1: (55, 70, 110), 2: (30, 200, 170), 3: (45, 115, 120), 4: (42, 110, 95), 6: (40, 100, 160),
    7: (30, 60, 70), 8: (30, 60, 70), 9: (10, 12, 14), 10: (40, 60, 70), 11: (40, 85, 90), 12: (40, 85, 90),
    13: (30, 200, 170), KID_R_MED: (28, 85, 160), KID_L_MED: (28, 85, 160), STOM_FLUID: (8, 8, 10),
    STOM_GAS: (-950, -950, -950), DUOD_LUMEN: (15, 15, 18), LIVER_VESSEL: (35, 90, 170),
}
TEXTURE = {LUNG: 30.0, MARROW: 40.0, BOWEL: 12.0, SUBFAT: 8.0, CAVITY: 8.0, MEDIAST: 8.0, 1: 6.0, 3: 6.0,
            MUSCLE: 6.0, GAS: 20.0, STOM_GAS: 10.0}
