"""The FLARE 2023 label table, defined once for inference, training, evaluation and the phantom.

Label maps hold 0 (background), the 13 organs 1..13 and the tumour label 14. The organ model
predicts 0..13; every tumour model is binary (0 background, 1 tumour) and runs on crops around one
host organ. The nnU-Net `dataset.json` label dictionaries (name -> value) are derived from here.
"""
from __future__ import annotations

ORGAN_NAMES: dict[int, str] = {
    1: "liver",
    2: "right_kidney",
    3: "spleen",
    4: "pancreas",
    5: "aorta",
    6: "inferior_vena_cava",
    7: "right_adrenal_gland",
    8: "left_adrenal_gland",
    9: "gallbladder",
    10: "esophagus",
    11: "stomach",
    12: "duodenum",
    13: "left_kidney",
}
ORGAN_LABELS: tuple[int, ...] = tuple(ORGAN_NAMES)  # 1..13
TUMOR_LABEL = 14
ALL_LABELS: tuple[int, ...] = ORGAN_LABELS + (TUMOR_LABEL,)
LABEL_NAMES: dict[int, str] = {**ORGAN_NAMES, TUMOR_LABEL: "tumor"}

# The organs FLARE 2023 tumours grow in, each with its own tumour model in the cascade.
TUMOR_HOSTS: tuple[int, ...] = (1, 2, 4, 13)  # liver, right kidney, pancreas, left kidney
TUMOR_HOST_NAMES: dict[int, str] = {organ: ORGAN_NAMES[organ] for organ in TUMOR_HOSTS}

# nnU-Net dataset.json "labels" (name -> value) of the organ model and of every tumour model.
ORGAN_MODEL_LABELS: dict[str, int] = {"background": 0, **{name: value for value, name in ORGAN_NAMES.items()}}
TUMOR_MODEL_LABEL = 1
TUMOR_MODEL_LABELS: dict[str, int] = {"background": 0, "tumor": TUMOR_MODEL_LABEL}
