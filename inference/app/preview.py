"""One PNG per case for a person to check a segmentation at a glance.

Axial, coronal and sagittal slices through the centre of the organs, and a second row through the
largest tumor component when there is a tumor. CT in a soft-tissue window, labels as translucent
colours with a legend. Radiological convention whatever the scan's direction matrix: the arrays
are first permuted and flipped to a canonical orientation (patient right on the image left,
anterior up in axial views, head up in coronal and sagittal views, anterior left in sagittal
views), and pixels are drawn in millimetres so anisotropic spacing keeps true proportions.

matplotlib is imported only when a preview is drawn: the inference runtime may not have it.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import cc3d
import numpy as np

from inference.core.geometry import Geometry
from inference.app.volumes import label_counts, tumor_components
from inference.core.labels import LABEL_NAMES, ORGAN_LABELS, TUMOR_LABEL

WINDOW_HU, LEVEL_HU = 400.0, 40.0  # abdominal soft-tissue window W400/L40
OVERLAY_ALPHA = 0.45
LABEL_COLOURS: dict[int, tuple[float, float, float]] = {
    1: (0.85, 0.35, 0.25),   # liver: brick red
    2: (0.95, 0.80, 0.15),   # right kidney: yellow
    3: (0.55, 0.35, 0.80),   # spleen: purple
    4: (1.00, 0.60, 0.75),   # pancreas: pink
    5: (0.95, 0.10, 0.10),   # aorta: red
    6: (0.20, 0.40, 1.00),   # inferior vena cava: blue
    7: (0.10, 0.85, 0.85),   # right adrenal gland: cyan
    8: (0.00, 0.60, 0.50),   # left adrenal gland: teal
    9: (0.20, 0.80, 0.20),   # gallbladder: green
    10: (1.00, 0.55, 0.10),  # esophagus: orange
    11: (0.70, 0.90, 0.40),  # stomach: light green
    12: (0.75, 0.55, 0.35),  # duodenum: tan
    13: (1.00, 0.95, 0.55),  # left kidney: pale yellow
    14: (1.00, 0.00, 1.00),  # tumor: magenta, also outlined
}
# Canonical axes: 0 superior->inferior, 1 anterior->posterior, 2 right->left. In ITK's LPS frame
# physical x points left, y posterior, z superior; this is the physical axis each canonical axis
# follows and the sign its index must increase towards.
_CANONICAL_PHYSICAL_AXIS = (2, 1, 0)
_CANONICAL_SIGN = (-1.0, 1.0, 1.0)


def canonical_axes(geometry: Geometry) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Array axis feeding each canonical axis, and whether it must be flipped.

    Oblique scans are mapped to the nearest anatomical axes (no resampling): the permutation with
    the largest total alignment wins, so two array axes never claim the same anatomical axis.
    """
    vectors = [geometry.axis_direction(axis) for axis in range(3)]
    order = max(itertools.permutations(range(3)),
                key=lambda perm: sum(abs(vectors[perm[c]][_CANONICAL_PHYSICAL_AXIS[c]]) for c in range(3)))
    flips = tuple(bool(vectors[order[c]][_CANONICAL_PHYSICAL_AXIS[c]] * _CANONICAL_SIGN[c] < 0) for c in range(3))
    return tuple(order), flips


def to_canonical(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The array (a view) in canonical orientation, with its spacing in canonical axis order."""
    order, flips = canonical_axes(geometry)
    canonical = np.transpose(array, order)
    canonical = canonical[tuple(slice(None, None, -1) if flip else slice(None) for flip in flips)]
    return canonical, tuple(geometry.spacing[axis] for axis in order)


def _centre(mask: np.ndarray) -> tuple[int, int, int] | None:
    """Rounded centroid of a mask from its three projections (no coordinate lists)."""
    total = int(np.count_nonzero(mask))
    if total == 0:
        return None
    centre = []
    for axis in range(3):
        counts = mask.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64)
        centre.append(int(np.floor(float(np.dot(np.arange(counts.size), counts)) / total + 0.5)))
    return tuple(centre)


def _largest_tumor_centre(labels: np.ndarray) -> tuple[int, int, int] | None:
    found = tumor_components(labels)
    if found is None:
        return None
    components, box = found
    counts = cc3d.statistics(components)["voxel_counts"]
    largest = int(np.argmax(counts[1:])) + 1
    centre = _centre(components == largest)
    return tuple(c + s.start for c, s in zip(centre, box))


def _views(volume: np.ndarray, spacing, point) -> list[tuple[str, np.ndarray, float, float, tuple[str, ...]]]:
    """(name, 2D slice, row spacing, column spacing, edge letters left/right/top/bottom)."""
    k, j, i = point
    s_si, s_ap, s_rl = spacing
    return [
        ("axial", volume[k], s_ap, s_rl, ("R", "L", "A", "P")),
        ("coronal", volume[:, j, :], s_si, s_rl, ("R", "L", "S", "I")),
        ("sagittal", volume[:, :, i], s_si, s_ap, ("A", "P", "S", "I")),
    ]


def _overlay_rgba(labels_2d: np.ndarray) -> np.ndarray:
    table = np.zeros((256, 4))
    for label, colour in LABEL_COLOURS.items():
        table[label] = (*colour, OVERLAY_ALPHA)
    return table[labels_2d.astype(np.uint8)]


def write_preview_png(path, image: np.ndarray, labels: np.ndarray, geometry: Geometry, *, title: str | None = None,
                      dpi: int = 100) -> None:
    """Write the preview PNG of one case (image in HU, labels 0..14, both shaped as `geometry`)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        raise RuntimeError("write_preview_png needs the package 'matplotlib', which is not installed "
                           "(pip install matplotlib)") from None
    image, labels = np.asarray(image), np.asarray(labels)
    for name, array in (("image", image), ("labels", labels)):
        if array.shape != geometry.shape:
            raise ValueError(f"{name} shape {array.shape} does not match geometry shape {geometry.shape}")
    ct, spacing = to_canonical(image, geometry)
    seg, _ = to_canonical(labels, geometry)
    organ_centre = _centre((seg >= ORGAN_LABELS[0]) & (seg <= ORGAN_LABELS[-1]))
    rows = [("organs centre", organ_centre or tuple(n // 2 for n in seg.shape))]
    tumor_centre = _largest_tumor_centre(seg)
    if tumor_centre is not None:
        rows.append(("largest tumor", tumor_centre))

    # Heights in inches: a row of panels, room for the panel titles, the legend and the title.
    row_in, legend_in, title_in = 5.2, 0.9, (0.5 if title else 0.0)
    height_in = row_in * len(rows) + legend_in + title_in + 0.35
    figure = Figure(figsize=(15, height_in), dpi=dpi, facecolor="black")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(len(rows), 3, left=0.01, right=0.99, top=1 - (title_in + 0.35) / height_in,
                               bottom=legend_in / height_in, wspace=0.04, hspace=0.12)
    for row, (row_name, point) in enumerate(rows):
        for column, (view, ct_2d, row_mm, col_mm, letters) in enumerate(_views(ct, spacing, point)):
            labels_2d = _views(seg, spacing, point)[column][1]
            _draw_view(figure.add_subplot(grid[row, column]), ct_2d, labels_2d, row_mm, col_mm, letters,
                       f"{view}, {row_name}: {_slice_text(view, point, geometry)}")
    counts = label_counts(seg)
    present = [label for label in LABEL_NAMES if label < counts.size and counts[label] > 0]
    handles = [Patch(facecolor=LABEL_COLOURS[label], edgecolor="white", label=f"{label} {LABEL_NAMES[label]}")
               for label in present]
    if handles:
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), frameon=False,
                      fontsize=10, labelcolor="white")
    else:
        figure.text(0.5, 0.02, "no labels", ha="center", color="white")
    if title:
        figure.suptitle(title, color="white", fontsize=13)
    figure.savefig(Path(path), format="png", facecolor=figure.get_facecolor())


def _slice_text(view: str, point, geometry: Geometry) -> str:
    """The slice's physical position (LPS mm, as viewers show it): the same for any storage order."""
    order, flips = canonical_axes(geometry)
    index = [0, 0, 0]
    for canonical_axis, array_axis in enumerate(order):
        size = geometry.shape[array_axis]
        index[array_axis] = size - 1 - point[canonical_axis] if flips[canonical_axis] else point[canonical_axis]
    physical = geometry.index_to_physical(index)
    canonical_axis = {"axial": 0, "coronal": 1, "sagittal": 2}[view]
    physical_axis = _CANONICAL_PHYSICAL_AXIS[canonical_axis]
    return f"{'xyz'[physical_axis]} = {physical[physical_axis]:.1f} mm"


def _draw_view(axes, ct_2d, labels_2d, row_mm: float, col_mm: float, letters, title: str) -> None:
    rows, columns = ct_2d.shape
    extent = (0.0, columns * col_mm, rows * row_mm, 0.0)  # millimetres: true proportions
    axes.imshow(ct_2d, cmap="gray", vmin=LEVEL_HU - WINDOW_HU / 2, vmax=LEVEL_HU + WINDOW_HU / 2,
                extent=extent, interpolation="bilinear")
    axes.imshow(_overlay_rgba(labels_2d), extent=extent, interpolation="nearest")
    if (labels_2d == TUMOR_LABEL).any():
        # Outline the tumor: a translucent fill alone is easy to miss on small lesions.
        y = (np.arange(rows) + 0.5) * row_mm
        x = (np.arange(columns) + 0.5) * col_mm
        axes.contour(x, y, (labels_2d == TUMOR_LABEL).astype(float), levels=[0.5],
                     colors=[LABEL_COLOURS[TUMOR_LABEL]], linewidths=1.2)
    axes.set_xlim(extent[0], extent[1])
    axes.set_ylim(extent[2], extent[3])
    axes.set_aspect("equal")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_facecolor("black")
    axes.set_title(title, color="white", fontsize=10)
    left, right, top, bottom = letters
    style = {"color": "yellow", "fontsize": 11, "fontweight": "bold", "transform": axes.transAxes}
    axes.text(0.01, 0.5, left, ha="left", va="center", **style)
    axes.text(0.99, 0.5, right, ha="right", va="center", **style)
    axes.text(0.5, 0.99, top, ha="center", va="top", **style)
    axes.text(0.5, 0.01, bottom, ha="center", va="bottom", **style)
