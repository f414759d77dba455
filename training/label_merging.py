"""Label merging for the organ model (step 1 of the recipe): pure functions on label arrays.

FLARE23 cases annotate different subsets of the 14 labels. Two rules make one training target:

- `merge_labels`: a real label wins where it exists; pseudo labels fill only the classes the case
  does not annotate. A voxel that is background in the annotation stays background unless the
  pseudo label names a class the annotation could not have marked there.
- `organ_target`: the organ model has 14 classes (background + 13 organs); label 14 is not one of
  them. Each tumor component is given to its host organ, as FLARE's organ-only datasets draw an
  organ's outline around its lesions.
"""
from __future__ import annotations

from typing import Iterable

import cc3d
import numpy as np
from scipy import ndimage

from inference.core.labels import ALL_LABELS, TUMOR_HOSTS, TUMOR_LABEL


def annotated_set(annotated: Iterable[int]) -> frozenset[int]:
    values = frozenset(int(a) for a in annotated)
    unknown = sorted(values - set(ALL_LABELS))
    if unknown:
        raise ValueError(f"annotated labels must be in 1..14, got {unknown}")
    return values


def infer_annotated(labels: np.ndarray) -> tuple[int, ...]:
    """What a label file annotates when nothing says so (real FLARE23): the labels present.

    A case holding all 13 organs counts as annotating all of them (an absent organ, e.g. a removed
    gallbladder or an esophagus out of view, is then a true absence). Otherwise an absent organ is
    taken as not annotated, so that pseudo labels may fill it.
    """
    present = {int(v) for v in np.unique(labels) if 0 < v <= TUMOR_LABEL}
    return tuple(sorted(present))


def merge_labels(real: np.ndarray, annotated: Iterable[int], pseudo: np.ndarray) -> np.ndarray:
    """Real labels where the case annotates them; pseudo labels of unannotated classes elsewhere.

    real: the case's label map (values 0 or annotated labels); pseudo: a model's labels on the same
    grid. Returns uint8 labels 0..14.
    """
    annotated = annotated_set(annotated)
    real, pseudo = np.asarray(real), np.asarray(pseudo)
    if real.shape != pseudo.shape:
        raise ValueError(f"real labels {real.shape} and pseudo labels {pseudo.shape} differ in shape")
    stray = sorted(int(v) for v in np.unique(real) if v != 0 and int(v) not in annotated)
    if stray:
        raise ValueError(f"real labels hold {stray}, which the case does not annotate ({sorted(annotated)})")
    merged = real.astype(np.uint8, copy=True)
    fillable = np.ones(256, dtype=bool)
    fillable[0] = False
    fillable[list(annotated)] = False
    fill = (merged == 0) & fillable[pseudo.astype(np.uint8, copy=False)]
    merged[fill] = pseudo[fill]
    return merged


def organ_target(labels: np.ndarray, *, pseudo: np.ndarray | None = None,
                 hosts: tuple[int, ...] = TUMOR_HOSTS) -> np.ndarray:
    """Organ labels 0..13: every tumor component (26-connected) takes its host organ's label.

    The host is voted by the organ labels on the component's one-voxel outer shell in `labels`
    and, when given, the `pseudo` organ labels inside the component (an organ model predicts the
    organ under a lesion). Votes for `hosts` win over other organs when there are any: a
    pancreatic tumor touches the duodenum and the vena cava, a renal one only fat. A component no
    organ votes for becomes background.
    """
    labels = np.asarray(labels)
    out = labels.astype(np.uint8, copy=True)
    tumor = labels == TUMOR_LABEL
    if not tumor.any():
        return out
    if pseudo is not None and np.asarray(pseudo).shape != labels.shape:
        raise ValueError(f"pseudo labels {np.shape(pseudo)} and labels {labels.shape} differ in shape")
    components, count = cc3d.connected_components(tumor, connectivity=26, return_N=True)
    is_host = np.zeros(256, dtype=bool)
    is_host[list(hosts)] = True
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        component = components[box] == index
        shell = ndimage.binary_dilation(component, structure=np.ones((3, 3, 3), bool)) & ~component
        votes = [labels[box][shell]]
        if pseudo is not None:
            votes.append(np.asarray(pseudo)[box][component])
        votes = np.concatenate(votes).astype(np.int64)
        votes = votes[(votes > 0) & (votes < TUMOR_LABEL)]
        preferred = votes[is_host[votes]]
        votes = preferred if preferred.size else votes
        host = int(np.bincount(votes).argmax()) if votes.size else 0
        out[box][component] = host
    return out
