"""Seeded procedural abdominal CT phantom: HU image + FLARE labels (0..14) on any grid.

The anatomy is modelled in physical patient coordinates (LPS, mm: +x patient's left, +y posterior,
+z head) from "nominal" adult measurements, scaled isotropically so that the body fits the in-plane
field of view (a clinical 400-mm FOV gets an adult-sized patient, a small test grid a shrunken one).
It is rasterised on a grid aligned with the physical axes and the result is transposed/flipped onto
the requested voxel grid, so one seed gives the same anatomy in physical space for every direction
that is a signed axis permutation (identity, diag(-1,-1,1), feet-first, permutations): labels and
image are then voxel-for-voxel identical after mapping back. Oblique directions are rendered on an
axis-aligned grid and resampled (nearest for labels, linear for the image), which is slower.

What is drawn: body outline (superellipses per slice), subcutaneous fat, muscle wall, abdominal and
thoracic cavities split by a two-domed diaphragm, lungs, heart, mediastinal fat, spine (bodies with
cortex, discs, canal, posterior elements), ribs, psoas/paraspinal/quadratus muscles, pelvis, femurs,
bladder, iliac/portal/splenic/renal vessels, bowel loops with gas (thresholded smooth noise), the 13
FLARE organs and tumours (label 14) in liver, kidneys and pancreas. Organs are ellipsoids or tapered
tube chains, each bent by its own low-frequency sinusoidal displacement field; they are painted in a
fixed precedence (vessels, oesophagus, adrenals, gallbladder, pancreas, duodenum, kidneys, spleen,
stomach, liver): an organ only takes voxels that are still free abdominal cavity, so a later organ
never overwrites an earlier one. HU come from per-phase tables (plain / arterial / venous) with
seeded jitter, a smooth texture, Gaussian partial-volume blur (sigma 0.5-1 voxel) and Gaussian noise
(sd 10-20 HU). The arterial aorta is drawn in 380-520 HU, so the method's contrast switch (median
aortic HU >= 445) fires for some seeds; plain and venous aortas stay far below it. Tumours: 1-3
per host with probability `tumor_probability` per host, nominal radius 3-40 mm (log-uniform, capped
per organ, scaled with the patient, at least 0.6 voxel), 75 % confined to the host, 25 % allowed to
bulge into the surrounding fat, 30-80 HU below (65 %) or above (35 %) the host in every phase.

Every random number is drawn before the grid is known, in a fixed order, so `phase`, `tumors`,
`tumor_probability` and `direction` never change the anatomy; `shape`/`spacing` change only the
patient's scale and the scanned range.

Speed, measured with `python -m phantom --benchmark` on the 2-core dev machine while
other jobs ran (load ~4): default (64, 128, 128) 0.11 s CPU / 0.17 s wall; clinical (300, 512, 512)
at (2.5, 0.8, 0.8) mm 7.7 s CPU / 11.7 s wall, peak RSS 0.8 GB. Everything is single-threaded
numpy/scipy. Shape functions are evaluated in float32 on organ bounding boxes only, with separable
broadcast terms (body and rib outlines as per-row half-widths); the texture field is made on an
8-mm grid and interpolated slab by slab; the blur (about 2 s of the clinical case) and the noise
(about 1 s) are the largest single costs. Oblique directions cost a resampling on top.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from inference.core.geometry import Geometry
from inference.core.labels import ORGAN_LABELS, TUMOR_LABEL
from inference.io.images import to_sitk, write_image_atomic, write_labels
from phantom.codes import AIR, BOWEL, CAVITY, FOVS, GAS, IDENTITY, PHASES, SUB_CODE_LABEL, TEXTURE
from phantom.shapes import Canvas
from phantom.anatomy import Anatomy, draw_anatomy, Layout, grid_layout
from phantom.painting import paint_body, paint_late, paint_organs, paint_skeleton, paint_tumors


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray  # int16 HU, (z, y, x)
    labels: np.ndarray  # uint8 0..14 FLARE labels, (z, y, x)
    geometry: Geometry
    phase: str
    tumor_hosts: tuple[int, ...]  # organ labels that received >= 1 tumour voxel


# ---- texture, intensities, assembly -------------------------------------------------------------

def _lerp_axis(array, coarse, fine, axis):
    """Linear interpolation of `array` along `axis` from coordinates `coarse` to `fine`."""
    pos = np.interp(fine, coarse, np.arange(len(coarse)))
    i0 = np.minimum(pos.astype(np.int64), max(len(coarse) - 2, 0))
    w = (pos - i0).astype(np.float32)
    shape = [1] * array.ndim
    shape[axis] = len(fine)
    a = np.take(array, i0, axis=axis)
    b = np.take(array, np.minimum(i0 + 1, len(coarse) - 1), axis=axis)
    b -= a
    b *= w.reshape(shape)
    a += b
    return a


class _Texture:
    """Smooth unit-variance noise (correlation ~10 nominal mm), made on a coarse grid.

    Upsampled in-plane once; the z interpolation is done per slab in `slab`, so the full-size field
    never exists at once and the work stays in cache.
    """

    def __init__(self, canvas: Canvas, an: Anatomy):
        rng = np.random.default_rng(an.texture_seed)
        coarse_axes = [np.arange(a[0] - 8, a[-1] + 16, 8.0) for a in canvas.axes]
        field = rng.standard_normal(tuple(len(a) for a in coarse_axes)).astype(np.float32)
        field = ndimage.gaussian_filter(field, 1.0, mode="wrap")
        field /= max(float(field.std()), 1e-6)
        planes = _lerp_axis(field, coarse_axes[1], canvas.axes[1], 1)
        self.planes = _lerp_axis(planes, coarse_axes[2], canvas.axes[2], 2)
        pos = np.interp(canvas.axes[0], coarse_axes[0], np.arange(len(coarse_axes[0])))
        self.i0 = np.minimum(pos.astype(np.int64), len(coarse_axes[0]) - 2)
        self.w = (pos - self.i0).astype(np.float32)[:, None, None]

    def slab(self, z0: int, z1: int) -> np.ndarray:
        a = self.planes[self.i0[z0:z1]]
        b = self.planes[self.i0[z0:z1] + 1]
        b -= a
        b *= self.w[z0:z1]
        a += b
        return a


def _paint_bowel(canvas: Canvas, an: Anatomy, noise: np.ndarray, z0: int, z1: int):
    """Bowel loops (and gas) in the free peritoneal fat of slab z0:z1, from the texture field."""
    sl = canvas.box((-400, -400, -300), (400, 24, 60))
    if sl is None or sl[0].stop <= z0 or sl[0].start >= z1:
        return
    lo, hi = max(sl[0].start, z0), min(sl[0].stop, z1)
    box = (slice(lo, hi), sl[1], sl[2])
    Z, Y, X = canvas.coords(box)
    n = noise[lo - z0:hi - z0, sl[1], sl[2]]
    view = canvas.cls[box]
    loops = (view == CAVITY) & (Z < 35 + 0.2 * X) & (n > an.bowel_threshold)
    view[loops] = BOWEL
    view[loops & (n > an.bowel_threshold + 1.9)] = GAS


def _code_tables(an: Anatomy, phase: str):
    hu = np.full(256, -1000.0, dtype=np.float32)
    label = np.zeros(256, dtype=np.uint8)
    texture = np.full(256, 4.0, dtype=np.float32)
    for code, value in an.hu[phase].items():
        hu[code] = value
    for code in ORGAN_LABELS:
        label[code] = code
    for code, lbl in SUB_CODE_LABEL.items():
        label[code] = lbl
    for code, amp in TEXTURE.items():
        texture[code] = amp
    if phase == "arterial":
        texture[3] = 22.0  # arterial-phase splenic moire
    texture[AIR] = 0.0
    for tumor in an.tumors:
        if "code" not in tumor:
            continue
        base = an.hu[phase][tumor["host"]]
        hu[tumor["code"]] = base + tumor["delta"]
        hu[tumor["code"] + 1] = min(base + tumor["delta"], 0.0) + 15.0  # fluid-like necrosis
        label[tumor["code"]] = label[tumor["code"] + 1] = TUMOR_LABEL
        texture[tumor["code"]] = 8.0
    return hu, label, texture


def make_phantom(seed: int, *, shape=(64, 128, 128), spacing=(2.5, 1.6, 1.6), phase=None, tumors=True,
                 direction=None, fov="abdomen", tumor_probability=0.7) -> Phantom:
    """A seeded synthetic abdominal CT with FLARE labels on the requested grid.

    shape/spacing are (z, y, x); direction is a SimpleITK row-major 3x3 (None: identity). `fov`
    shifts the scanned z-range (one of FOVS, or "random" to draw it from the seed); `phase` None
    draws it. `tumor_probability` is per tumour host (liver, kidneys, pancreas).
    """
    if phase is not None and phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES} or None, got {phase!r}")
    if fov != "random" and fov not in FOVS:
        raise ValueError(f"fov must be one of {FOVS} or 'random', got {fov!r}")
    if len(tuple(shape)) != 3 or len(tuple(spacing)) != 3:
        raise ValueError(f"shape and spacing must have 3 entries (z, y, x), got {shape}, {spacing}")
    if not 0.0 <= tumor_probability <= 1.0:
        raise ValueError(f"tumor_probability must be in [0, 1], got {tumor_probability}")
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    direction = IDENTITY if direction is None else tuple(float(d) for d in direction)
    Geometry(shape, spacing, (0.0, 0.0, 0.0), direction)  # validates before any work

    an = draw_anatomy(np.random.default_rng(np.random.SeedSequence([int(seed), 1])))
    phase = phase or an.phase_draw
    layout = grid_layout(shape, spacing, direction, an, an.fov_draw if fov == "random" else fov)
    canvas = Canvas(*(a / layout.scale for a in layout.axes_phys))
    paint_body(canvas, an)
    paint_skeleton(canvas, an)
    paint_organs(canvas, an)
    min_radius = 0.6 * max(spacing) / layout.scale
    hosts = paint_tumors(canvas, an, tumor_probability, min_radius) if tumors else ()
    paint_late(canvas, an)
    image, labels = _intensities(canvas, an, phase)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
    if layout.permutation is not None:
        image = _finish_image(image, an, rng)
        image = _to_index_order(image, layout)
        labels = _to_index_order(labels, layout)
    else:
        image, labels = _resample_oblique(image, labels, layout)
        image = _finish_image(image, an, rng)
    return Phantom(image=image, labels=labels, geometry=layout.geometry, phase=phase, tumor_hosts=hosts)


_SLAB = 16  # z-slices per chunk in the full-volume passes (keeps temporaries in cache)


def _intensities(canvas: Canvas, an: Anatomy, phase: str):
    """Noise-free HU (table + texture) and labels from the class codes, slab by slab."""
    hu_table, label_table, texture_table = _code_tables(an, phase)
    texture = _Texture(canvas, an)
    image = np.empty(canvas.shape, dtype=np.float32)
    labels = np.empty(canvas.shape, dtype=np.uint8)
    for z0 in range(0, canvas.shape[0], _SLAB):
        z1 = min(z0 + _SLAB, canvas.shape[0])
        noise = texture.slab(z0, z1)
        _paint_bowel(canvas, an, noise, z0, z1)
        cls = canvas.cls[z0:z1]
        noise *= texture_table[cls]
        noise += hu_table[cls]
        image[z0:z1] = noise
        labels[z0:z1] = label_table[cls]
    return image, labels


def _finish_image(image: np.ndarray, an: Anatomy, rng) -> np.ndarray:
    """Partial-volume blur, Gaussian noise, clip and round to int16."""
    ndimage.gaussian_filter(image, an.blur_sigma, truncate=3.0, output=image)
    out = np.empty(image.shape, dtype=np.int16)
    sd = np.float32(an.noise_sd)
    for z0 in range(0, image.shape[0], _SLAB):
        slab = image[z0:z0 + _SLAB]
        noise = rng.standard_normal(slab.shape, dtype=np.float32)
        noise *= sd
        slab += noise
        np.clip(slab, -1024, 3071, out=slab)
        out[z0:z0 + _SLAB] = np.rint(slab, out=slab)
    return out


def _to_index_order(array: np.ndarray, layout: Layout) -> np.ndarray:
    out = np.transpose(array, layout.permutation)
    if layout.flips:
        out = np.flip(out, axis=layout.flips)
    return np.ascontiguousarray(out)


def _resample_oblique(image, labels, layout: Layout):
    g = layout.geometry
    index = np.indices(g.shape, dtype=np.float64).reshape(3, -1).T
    physical = g.index_to_physical(index)
    coords = [(physical[:, p] - layout.axes_phys[2 - p][0]) / (layout.axes_phys[2 - p][1] - layout.axes_phys[2 - p][0])
              for p in (2, 1, 0)]
    out_image = ndimage.map_coordinates(image, coords, order=1, mode="nearest").astype(np.float32)
    out_labels = ndimage.map_coordinates(labels, coords, order=0, mode="nearest").astype(np.uint8)
    return out_image.reshape(g.shape), out_labels.reshape(g.shape)


def write_phantom(phantom: Phantom, image_path, label_path=None) -> None:
    """Write the image (int16) and optionally the labels (uint8) atomically with the phantom's geometry."""
    write_image_atomic(to_sitk(phantom.image, phantom.geometry), image_path)
    if label_path is not None:
        write_labels(label_path, phantom.labels, phantom.geometry)
