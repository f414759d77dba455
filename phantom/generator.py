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

Speed, measured with `python -m phantom.generator --benchmark` on the 2-core dev machine while
other jobs ran (load ~4): default (64, 128, 128) 0.11 s CPU / 0.17 s wall; clinical (300, 512, 512)
at (2.5, 0.8, 0.8) mm 7.7 s CPU / 11.7 s wall, peak RSS 0.8 GB. Everything is single-threaded
numpy/scipy. Shape functions are evaluated in float32 on organ bounding boxes only, with separable
broadcast terms (body and rib outlines as per-row half-widths); the texture field is made on an
8-mm grid and interpolated slab by slab; the blur (about 2 s of the clinical case) and the noise
(about 1 s) are the largest single costs. Oblique directions cost a resampling on top.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from inference.core.geometry import Geometry
from inference.core.labels import ORGAN_LABELS, TUMOR_HOSTS, TUMOR_LABEL
from inference.io.images import to_sitk, write_image_atomic, write_labels

PHASES = ("plain", "arterial", "venous")
FOVS = ("abdomen", "chest-abdomen", "abdomen-pelvis", "full")
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

# Nominal (unscaled, adult) z centre of each scan range; anatomy z=0 is about the renal hilum (L1-L2).
_FOV_CENTRE_Z = {"abdomen": 10.0, "chest-abdomen": 95.0, "abdomen-pelvis": -90.0, "full": -30.0}
_MAX_TUMORS_PER_HOST = 3
_TUMOR_CANDIDATES = 24

# ---- voxel class codes (uint8); organ codes 1..13 equal their FLARE label ------------------------
AIR = 0
SUBFAT, MUSCLE, CAVITY, THORAX, DIAPH, MEDIAST, LUNG = 20, 21, 22, 23, 24, 25, 26
CORTEX, MARROW, DISC, CSF, RIB, HEART, BOWEL, GAS = 27, 28, 29, 30, 31, 32, 33, 34
PORTAL, VEIN, ARTERY, BLADDER, YELLOW_MARROW = 35, 36, 37, 38, 39
KID_R_MED, KID_L_MED, STOM_FLUID, STOM_GAS, DUOD_LUMEN, LIVER_VESSEL = 40, 41, 42, 43, 44, 45
TUMOR_CODE0 = 64  # tumour i: 64 + 2i solid part, 65 + 2i necrotic core

_SUB_CODE_LABEL = {KID_R_MED: 2, KID_L_MED: 13, STOM_FLUID: 11, STOM_GAS: 11, DUOD_LUMEN: 12, LIVER_VESSEL: 1}
_HOST_CODES = {1: (1, LIVER_VESSEL), 2: (2, KID_R_MED), 4: (4,), 13: (13, KID_L_MED)}

# (plain, arterial, venous) HU; "A" entries are filled from the seeded aortic values.
_HU = {
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
_TEXTURE = {LUNG: 30.0, MARROW: 40.0, BOWEL: 12.0, SUBFAT: 8.0, CAVITY: 8.0, MEDIAST: 8.0, 1: 6.0, 3: 6.0,
            MUSCLE: 6.0, GAS: 20.0, STOM_GAS: 10.0}


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray  # int16 HU, (z, y, x)
    labels: np.ndarray  # uint8 0..14 FLARE labels, (z, y, x)
    geometry: Geometry
    phase: str
    tumor_hosts: tuple[int, ...]  # organ labels that received >= 1 tumour voxel


# ---- geometry primitives ----------------------------------------------------------------------

def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _frame(primary, secondary) -> np.ndarray:
    """Rows: orthonormal axes (secondary', third, primary) from two rough directions."""
    w = _unit(primary)
    u = np.asarray(secondary, dtype=np.float64)
    u = _unit(u - (u @ w) * w)
    return np.stack([u, np.cross(w, u), w])


def _rotation(angles) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class _Warp:
    """Low-frequency displacement d(p) = sum_m v_m sin(k_m . p + phase_m), in nominal mm."""
    k: np.ndarray  # (m, 3) xyz
    phase: np.ndarray  # (m,)
    v: np.ndarray  # (m, 3) xyz amplitudes

    @staticmethod
    def draw(rng, amplitude, wavelength, modes=3) -> "_Warp":
        directions = rng.normal(size=(modes, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        k = directions * (2 * math.pi / (wavelength * rng.uniform(0.7, 1.3, size=(modes, 1))))
        return _Warp(k, rng.uniform(0, 2 * math.pi, modes), rng.normal(size=(modes, 3)) * amplitude / math.sqrt(modes))

    @property
    def bound(self) -> float:
        return float(np.abs(self.v).sum(axis=0).max())

    def sines(self, Z, Y, X) -> list[np.ndarray]:
        out = []
        for (kx, ky, kz), phase in zip(self.k, self.phase):
            a = kx * X + ky * Y  # (1, ny, nx)
            b = kz * Z + np.float32(phase)  # (nz, 1, 1)
            s = np.sin(a) * np.cos(b)
            s += np.cos(a) * np.sin(b)
            out.append(s)
        return out


@dataclass(frozen=True)
class _Ellipsoid:
    center: np.ndarray  # xyz nominal mm
    axes: np.ndarray  # rows: local unit axes in xyz
    semi: np.ndarray  # semi-axes along the rows

    def half_extent(self) -> np.ndarray:
        return np.sqrt(((self.axes * self.semi[:, None]) ** 2).sum(axis=0))

    def r2(self, Z, Y, X, warp: _Warp | None = None, sines=None) -> np.ndarray:
        """Squared normalised radius (< 1 inside) of the warped point."""
        m = self.axes / self.semi[:, None]
        cx, cy, cz = self.center
        total = None
        for i in range(3):
            q = (np.float32(m[i, 0]) * (X - np.float32(cx)) + np.float32(m[i, 1]) * (Y - np.float32(cy))) \
                + np.float32(m[i, 2]) * (Z - np.float32(cz))
            if warp is not None:
                for v, s in zip(warp.v, sines):
                    q += np.float32(m[i] @ v) * s
            q *= q
            total = q if total is None else np.add(total, q, out=total)
        return total


@dataclass(frozen=True)
class _Chain:
    """Tapered tube through nodes (xyz nominal mm) with radii; union of cone-capsules."""
    nodes: np.ndarray
    radii: np.ndarray

    def bounds(self, pad: float) -> tuple[np.ndarray, np.ndarray]:
        r = self.radii.max() + pad
        return self.nodes.min(axis=0) - r, self.nodes.max(axis=0) + r


def _take(array, sl):
    """Slice a possibly broadcast-shaped (size-1 axes) array with a full 3D slice tuple."""
    return array[tuple(s if n > 1 else slice(None) for s, n in zip(sl, array.shape))]


# ---- canvas -------------------------------------------------------------------------------------

def _lut(codes) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[list(codes)] = True
    return table


class _Canvas:
    """Class-code volume on an axis-aligned grid; coordinates in nominal (unscaled) mm."""

    def __init__(self, zs, ys, xs):
        self.axes = (np.asarray(zs, np.float64), np.asarray(ys, np.float64), np.asarray(xs, np.float64))
        self.cls = np.zeros(tuple(len(a) for a in self.axes), dtype=np.uint8)
        self.step = tuple(float(a[1] - a[0]) if len(a) > 1 else 1.0 for a in self.axes)

    @property
    def shape(self):
        return self.cls.shape

    def box(self, lo_xyz, hi_xyz):
        """Index slices (z, y, x) of the grid points inside a nominal xyz box, or None."""
        slices = []
        for coords, lo, hi in zip(self.axes, lo_xyz[::-1], hi_xyz[::-1]):
            i0 = int(np.searchsorted(coords, lo, "left"))
            i1 = int(np.searchsorted(coords, hi, "right"))
            if i1 <= i0:
                return None
            slices.append(slice(i0, i1))
        return tuple(slices)

    def coords(self, sl):
        z, y, x = (a[s].astype(np.float32) for a, s in zip(self.axes, sl))
        return z[:, None, None], y[None, :, None], x[None, None, :]

    def paint(self, sl, mask, code, allowed) -> int:
        view = self.cls[sl]
        ok = mask & allowed[view]
        if np.ndim(code) == 0:
            view[ok] = code
        else:
            view[ok] = np.broadcast_to(code, ok.shape)[ok]
        return int(np.count_nonzero(ok))

    def code_at(self, point_xyz) -> int:
        index = []
        for coords, step, p in zip(self.axes, self.step, point_xyz[::-1]):
            i = int(round((p - coords[0]) / step))
            if i < 0 or i >= len(coords):
                return -1
            index.append(i)
        return int(self.cls[tuple(index)])


def _chain_sdf(canvas: _Canvas, chain: _Chain, warp: _Warp | None):
    """(slices, signed distance in nominal mm over the chain's box) or None outside the grid."""
    pad = (warp.bound if warp is not None else 0.0) + 2 * max(canvas.step)
    lo, hi = chain.bounds(pad)
    sl = canvas.box(lo, hi)
    if sl is None:
        return None
    Z, Y, X = canvas.coords(sl)
    if warp is not None:
        sines = warp.sines(Z, Y, X)
        P = []
        for axis, base in enumerate((X, Y, Z)):
            p = np.broadcast_to(base, sines[0].shape).copy()
            for v, s in zip(warp.v, sines):
                p += np.float32(v[axis]) * s
            P.append(p)
        X, Y, Z = P
    shape = tuple(s.stop - s.start for s in sl)
    sdf = np.full(shape, np.inf, dtype=np.float32)
    for a, b, ra, rb in zip(chain.nodes[:-1], chain.nodes[1:], chain.radii[:-1], chain.radii[1:]):
        seg_lo = np.minimum(a, b) - max(ra, rb) - pad
        seg_hi = np.maximum(a, b) + max(ra, rb) + pad
        ssl = canvas.box(seg_lo, seg_hi)
        if ssl is None:
            continue
        rel = tuple(slice(max(s.start, o.start) - o.start, min(s.stop, o.stop) - o.start) for s, o in zip(ssl, sl))
        if any(r.stop <= r.start for r in rel):
            continue
        px, py, pz = (_take(c, rel) for c in (X, Y, Z))
        d = (b - a).astype(np.float64)
        length2 = max(float(d @ d), 1e-9)
        t = (px - np.float32(a[0])) * np.float32(d[0] / length2) + (py - np.float32(a[1])) * np.float32(d[1] / length2)
        t = t + (pz - np.float32(a[2])) * np.float32(d[2] / length2)
        np.clip(t, 0, 1, out=t)
        dist = np.square(px - (np.float32(a[0]) + np.float32(d[0]) * t))
        dist += np.square(py - (np.float32(a[1]) + np.float32(d[1]) * t))
        dist += np.square(pz - (np.float32(a[2]) + np.float32(d[2]) * t))
        np.sqrt(dist, out=dist)
        dist -= np.float32(ra) + np.float32(rb - ra) * t
        target = sdf[rel]
        np.minimum(target, dist, out=target)
    return sl, sdf


def _ellipsoid_box(canvas, ellipsoids, warp):
    pad = (warp.bound if warp is not None else 0.0) + 2 * max(canvas.step)
    lo = np.min([e.center - e.half_extent() for e in ellipsoids], axis=0) - pad
    hi = np.max([e.center + e.half_extent() for e in ellipsoids], axis=0) + pad
    return canvas.box(lo, hi)


# ---- the patient: every random number is drawn here, before any geometry is known ------------

@dataclass
class _Anatomy:
    phase_draw: str = ""
    fov_draw: str = ""
    size: float = 1.0
    fill: float = 0.85
    z_jitter: float = 0.0
    fat: float = 20.0
    muscle: float = 12.0
    cavity: dict = field(default_factory=dict)
    dome: tuple = (0.0, 0.0)
    ell: dict = field(default_factory=dict)  # name -> _Ellipsoid
    chains: dict = field(default_factory=dict)  # name -> _Chain
    warps: dict = field(default_factory=dict)  # name -> _Warp
    hu: dict = field(default_factory=dict)  # phase -> {code: HU}
    texture_seed: int = 0
    noise_sd: float = 15.0
    blur_sigma: float = 0.7
    gas_level: float = 0.0
    liver_cut: float = -28.0
    bowel_threshold: float = 0.0
    tumors: list = field(default_factory=list)


def _jitter(rng, point, sd):
    return np.asarray(point, dtype=np.float64) + rng.normal(0.0, sd, 3)


def _draw_ellipsoid(rng, center, axes, semi, jitter=4.0, scale=0.1, angle_sd=0.12):
    center = _jitter(rng, center, jitter)
    semi = np.asarray(semi, np.float64) * rng.uniform(1 - scale, 1 + scale, 3)
    axes = (_rotation(rng.normal(0, angle_sd, 3)) @ np.asarray(axes, np.float64).T).T
    return _Ellipsoid(center, axes, semi)


def _draw_chain(rng, nodes, radii, jitter=3.0, radius_scale=0.1):
    nodes = np.asarray(nodes, np.float64) + rng.normal(0, jitter, (len(nodes), 3))
    radii = np.asarray(radii, np.float64) * rng.uniform(1 - radius_scale, 1 + radius_scale) \
        * rng.uniform(0.95, 1.05, len(radii))
    return _Chain(nodes, radii)


def _draw_anatomy(rng) -> _Anatomy:
    an = _Anatomy()
    an.phase_draw = str(rng.choice(PHASES))
    an.fov_draw = str(rng.choice(FOVS))
    an.size = float(rng.uniform(0.9, 1.1))
    an.fill = float(rng.uniform(0.8, 0.92))
    an.z_jitter = float(rng.uniform(-8, 8))
    an.fat = float(rng.uniform(8, 32))
    an.muscle = float(rng.uniform(10, 14))
    an.cavity = {"a": rng.uniform(0.96, 1.04), "b": rng.uniform(0.96, 1.04)}
    an.dome = (float(rng.normal(0, 5)), float(rng.normal(0, 5)))
    E, C = an.ell, an.chains
    I3 = np.eye(3)
    # vessels and tubes (nominal adult mm; y anterior < 0 < posterior)
    C["aorta"] = _draw_chain(rng, [(28, 28, 420), (27, 26, 160), (18, 14, 70), (12, 10, 0), (8, 12, -80),
                                   (6, 14, -120)], [12, 12, 11.5, 11, 10, 9])
    C["ivc"] = _draw_chain(rng, [(-14, 16, -125), (-21, 12, -60), (-24, 12, 0), (-24, 13, 50), (-20, 8, 92),
                                 (-14, 0, 108)], [10, 12, 13, 14, 15, 15])
    C["esophagus"] = _draw_chain(rng, [(4, 12, 420), (6, 12, 200), (10, 6, 112), (22, -6, 84), (36, -16, 66)],
                                 [11, 11, 11, 11.5, 12], jitter=2.0)
    E["adrenal_r"] = _draw_ellipsoid(rng, (-42, 32, 42), _frame((0.2, 0.1, 1), (1, -0.8, 0)), (10, 17, 26), 3)
    E["adrenal_l"] = _draw_ellipsoid(rng, (44, 30, 36), _frame((-0.2, 0.1, 1), (1, 0.8, 0)), (10, 17, 26), 3)
    E["gallbladder"] = _draw_ellipsoid(rng, (-45, -50, 2), _frame((0.15, -0.45, -0.88), (1, 0, 0)), (17, 18, 38))
    C["pancreas"] = _draw_chain(rng, [(-32, -10, -20), (-28, -22, -5), (-5, -34, 2), (28, -26, 10), (62, 0, 22),
                                      (80, 12, 30)], [15, 17, 12, 12, 10, 8])
    C["duodenum"] = _draw_chain(rng, [(-6, -50, 6), (-32, -40, 10), (-52, -22, 0), (-56, -12, -30),
                                      (-46, -10, -52), (-10, -20, -58), (18, -22, -52), (35, -26, -35),
                                      (40, -28, -15)], [12, 13, 12, 12, 12, 12, 12, 11, 11])
    for side, sign, z in (("r", -1, -25), ("l", 1, -12)):
        axes = _frame((-sign * 0.25, 0.15, 1), (sign * 1, -0.5, 0))  # upper pole medial/posterior
        E[f"kidney_{side}"] = _draw_ellipsoid(rng, (sign * 72, 55, z), axes, (27, 22, 52), 4, 0.08)
        hilum_center = E[f"kidney_{side}"].center + np.array([-sign * 24.0, -10.0, 0.0])
        E[f"hilum_{side}"] = _draw_ellipsoid(rng, hilum_center, I3, (13, 10, 17), 1.5, 0.1)
    E["spleen"] = _draw_ellipsoid(rng, (95, 28, 48), _frame((0.55, -0.7, -0.45), (0.8, 0.6, 0)), (20, 40, 56))
    C["stomach"] = _draw_chain(rng, [(36, -16, 66), (62, 2, 88), (64, -34, 48), (55, -55, 12), (22, -60, -4),
                                     (-6, -50, 6)], [14, 30, 30, 27, 20, 12], jitter=4.0)
    E["liver_right"] = _draw_ellipsoid(rng, (-62, 0, 45), I3, (76, 80, 78), 4, 0.06)
    E["liver_left"] = _draw_ellipsoid(rng, (12, -52, 62), _rotation((0, 0, -0.2)), (58, 30, 36), 4, 0.08)
    an.liver_cut = float(rng.uniform(-34, -22))
    hepatic = []
    for end in ((-110, -20, 50), (-60, -50, 58), (0, -52, 70)):
        hepatic.append(_draw_chain(rng, [(-20, 8, 94), end], [6, 3], jitter=5.0))
    C["hepatic_veins"] = hepatic
    # unlabelled vessels
    C["portal"] = _draw_chain(rng, [(-5, -22, -2), (-25, -18, 20), (-45, -8, 40)], [8, 8, 7], 2.0)
    C["splenic_v"] = _draw_chain(rng, [(-5, -22, -2), (30, -14, 6), (62, 10, 20), (85, 22, 34)], [5, 5, 5, 4], 2.0)
    C["smv"] = _draw_chain(rng, [(-5, -22, -2), (-6, -32, -60), (-2, -40, -110)], [7, 6, 5], 2.0)
    C["sma"] = _draw_chain(rng, [(10, 0, 12), (8, -22, -5), (5, -34, -60), (10, -42, -110)], [4, 4, 3.5, 3], 2.0)
    C["renal_v_l"] = _draw_chain(rng, [(52, 40, -8), (20, -4, -6), (-20, 12, -8)], [5, 5, 5], 2.0)
    C["renal_v_r"] = _draw_chain(rng, [(-52, 40, -20), (-24, 14, -16)], [5, 5], 2.0)
    for sign, side in ((-1, "r"), (1, "l")):
        C[f"iliac_a_{side}"] = _draw_chain(rng, [(6, 14, -118), (sign * 40, 6, -185), (sign * 75, -20, -265),
                                                 (sign * 88, -25, -340), (sign * 92, -22, -700)], [8, 7, 6, 6, 5], 2.0)
        C[f"iliac_v_{side}"] = _draw_chain(rng, [(-14, 18, -122), (sign * 40, 18, -190), (sign * 70, -6, -268),
                                                 (sign * 80, -12, -340), (sign * 84, -10, -700)], [10, 9, 8, 8, 7], 2.0)
        C[f"psoas_{side}"] = _draw_chain(rng, [(sign * 26, 46, 35), (sign * 32, 44, -30), (sign * 46, 36, -120),
                                               (sign * 62, 20, -200), (sign * 72, -5, -270)], [5, 14, 23, 22, 16], 2.0)
        C[f"paraspinal_{side}"] = _draw_chain(rng, [(sign * 36, 100, 330), (sign * 36, 100, -180)], [22, 22], 1.0)
        C[f"quadratus_{side}"] = _draw_chain(rng, [(sign * 62, 92, 20), (sign * 70, 86, -120)], [12, 16], 1.0)
    # organ-level deformation fields: amplitude ~ 8-12 % of the size, wavelength ~ 2-3 sizes
    for name, amplitude, wavelength in (("aorta", 2.0, 150), ("ivc", 2.5, 120), ("esophagus", 2.5, 100),
                                        ("adrenal_r", 2.0, 50), ("adrenal_l", 2.0, 50), ("gallbladder", 3.0, 70),
                                        ("pancreas", 4.0, 90), ("duodenum", 4.0, 90), ("kidney_r", 3.0, 90),
                                        ("kidney_l", 3.0, 90), ("spleen", 5.0, 100), ("stomach", 6.0, 120),
                                        ("liver", 9.0, 160)):
        an.warps[name] = _Warp.draw(rng, amplitude, wavelength)
    # intensities
    aorta = {"plain": rng.uniform(35, 50), "arterial": rng.uniform(380, 520), "venous": rng.uniform(160, 200)}
    for i, phase in enumerate(PHASES):
        jitters = rng.normal(0, 5, len(_HU))
        table = {code: values[i] + (jit if code not in (AIR, GAS, STOM_GAS, CORTEX) else 0.0)
                 for (code, values), jit in zip(sorted(_HU.items()), jitters)}
        table[5] = table[ARTERY] = aorta[phase]
        table[HEART] = {"plain": 40.0, "arterial": 0.8 * aorta["arterial"], "venous": 0.9 * aorta["venous"]}[phase]
        an.hu[phase] = table
    an.texture_seed = int(rng.integers(2**31))
    an.noise_sd = float(rng.uniform(10, 20))
    an.blur_sigma = float(rng.uniform(0.5, 1.0))
    an.gas_level = float(rng.uniform(-55, -35))
    an.bowel_threshold = float(rng.uniform(-0.2, 0.3))
    # tumours: everything drawn for every host, whether used or not, so the stream never shifts
    limits = {1: 40.0, 2: 18.0, 4: 16.0, 13: 18.0}
    for host in TUMOR_HOSTS:
        gate = float(rng.random())
        count = int(rng.integers(1, _MAX_TUMORS_PER_HOST + 1))
        sign = 1.0 if rng.random() < 0.35 else -1.0  # one lesion type per organ: all hypo- or all hyperdense
        for k in range(_MAX_TUMORS_PER_HOST):
            radius = float(min(math.exp(rng.uniform(math.log(3), math.log(40))), limits[host]))
            an.tumors.append({
                "host": host, "gate": gate, "active": k < count, "radius": radius,
                "delta": float(rng.uniform(30, 80)) * sign,
                "exophytic": bool(rng.random() < 0.25), "necrotic": bool(rng.random() < 0.5),
                "candidates": rng.random((_TUMOR_CANDIDATES, 4)),
                "semi": rng.uniform(0.85, 1.15, 3), "angles": rng.normal(0, 0.6, 3),
                "warp": _Warp.draw(rng, 0.12 * radius, 2.5 * radius + 5),
            })
    return an


# ---- layout: grid, scale and origin -----------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    geometry: Geometry
    scale: float  # physical mm per nominal mm
    axes_phys: tuple  # canonical coordinates (z, y, x), physical mm, ascending
    permutation: tuple | None  # canonical axis for each array axis, or None (oblique)
    flips: tuple  # array axes to flip after the transpose


def _body_extent(an: _Anatomy):
    """Nominal abdominal body half-width and the y range (anterior, posterior) of the outline."""
    wall = an.fat + an.muscle
    return 135.0 * an.cavity["a"] + wall, (-(88.0 * an.cavity["b"] + wall), 100.0 * an.cavity["b"] + wall)


def _layout(shape, spacing, direction, an: _Anatomy, fov: str) -> _Layout:
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    columns = [matrix[:, 2 - axis] for axis in range(3)]  # physical direction of array axes z, y, x
    is_permutation = all(np.abs(c).max() > 1 - 1e-6 for c in columns) and \
        len({int(np.abs(c).argmax()) for c in columns}) == 3
    n_phys, step_phys = [0, 0, 0], [0.0, 0.0, 0.0]  # per physical axis x, y, z
    if is_permutation:
        for axis, column in enumerate(columns):
            p = int(np.abs(column).argmax())
            n_phys[p], step_phys[p] = shape[axis], spacing[axis]
    else:  # render on the axis-aligned box around the rotated grid, at the nearest axis' spacing
        extent = np.abs(matrix) @ np.array([(n - 1) * s for n, s in zip(shape[::-1], spacing[::-1])])
        for p in range(3):
            axis = int(np.argmax([abs(c[p]) for c in columns]))
            step_phys[p] = spacing[axis]
            n_phys[p] = int(math.ceil(extent[p] / step_phys[p] - 1e-9)) + 1
    half_width, (y_front, y_back) = _body_extent(an)
    # in-plane field of view: the extent of the array axis closest to physical x (y), so that a
    # rotated grid scales the patient like its unrotated twin
    nearest = [int(np.argmax([abs(c[p]) for c in columns])) for p in range(3)]
    fov_x, fov_y = (shape[nearest[p]] * spacing[nearest[p]] for p in (0, 1))
    scale = min(an.size, an.fill * fov_x / (2 * half_width), an.fill * fov_y / (y_back - y_front))
    centre = np.array([0.0, scale * (y_front + y_back) / 2, scale * (_FOV_CENTRE_Z[fov] + an.z_jitter)])
    index_half = np.array([(n - 1) * s for n, s in zip(shape[::-1], spacing[::-1])]) / 2  # xyz index order
    origin = (centre - matrix @ index_half).astype(np.float32).astype(np.float64)  # float32-exact: NIfTI round trips
    geometry = Geometry(tuple(shape), tuple(spacing), tuple(origin), tuple(matrix.ravel()))
    axes_phys = tuple(centre[p] + (np.arange(n_phys[p]) - (n_phys[p] - 1) / 2) * step_phys[p] for p in (2, 1, 0))
    if is_permutation:
        permutation = tuple(2 - int(np.abs(c).argmax()) for c in columns)
        flips = tuple(axis for axis, c in enumerate(columns) if c[int(np.abs(c).argmax())] < 0)
    else:
        permutation, flips = None, ()
    return _Layout(geometry, scale, axes_phys, permutation, flips)


# ---- painting ---------------------------------------------------------------------------------

_FREE = _lut([CAVITY])
_FREE_TUBE = _lut([CAVITY, THORAX, DIAPH, MEDIAST])


def _half_width(Y, a, b_front, b_back):
    """Half-width in x, per (z, y) row, of the superellipse |x/a|^2.2 + |y/b|^q < 1 (-1: row outside).

    q is 2.2 in front and 3 behind (a flat back on the table). a, b_* are per-z arrays; the result has
    shape (nz, ny, 1), so that `abs(X) < width` tests a whole box with one cheap comparison.
    """
    a, b_front, b_back = (np.asarray(v, np.float64)[:, None, None] for v in (a, b_front, b_back))
    y = np.asarray(Y, np.float64)
    yt = np.where(y < 0, np.abs(y / b_front) ** 2.2, np.abs(y / b_back) ** 3.0)
    return np.where(yt < 1, a * np.clip(1 - yt, 0, None) ** (1 / 2.2), -1.0).astype(np.float32)


def _dome(an: _Anatomy, X, Y):
    """Nominal z of the diaphragm over (y, x): two domes (right higher), lower in front and behind."""
    right, left = an.dome
    z = 60.0 + (52.0 + right) * np.exp(-((X + 50) / 50) ** 2) + (42.0 + left) * np.exp(-((X - 55) / 48) ** 2)
    return (z - 0.0035 * Y ** 2 - 0.3 * np.maximum(Y - 30.0, 0.0)).astype(np.float32)


def _paint_body(canvas: _Canvas, an: _Anatomy):
    """Air, subcutaneous fat, muscle wall and cavity (abdominal / thoracic split by the diaphragm)."""
    zs = canvas.axes[0]
    knots = [-330.0, -200.0, -120.0, 0.0, 80.0, 160.0, 330.0, 500.0]
    a_c = np.interp(zs, knots, [118, 122, 128, 135, 135, 130, 120, 70]) * an.cavity["a"]
    bf_c = np.interp(zs, knots, [75, 80, 84, 88, 90, 85, 80, 50]) * an.cavity["b"]
    bb_c = np.interp(zs, knots, [80, 86, 94, 100, 100, 100, 95, 60]) * an.cavity["b"]
    fat = an.fat * np.interp(zs, [-300, -150, 0, 150, 300], [1.2, 1.2, 1.0, 0.7, 0.6])
    Z, Y, X = canvas.coords(tuple(slice(0, n) for n in canvas.shape))
    ax = np.abs(X)
    torso = zs > -305
    has_cavity = ((zs > -300) & (zs < 330))[:, None, None]  # pelvic floor and neck: no cavity
    masks = []
    for grow in (an.muscle + fat, an.muscle + 0 * fat, 0 * fat):
        masks.append(ax < _half_width(Y, a_c + grow, bf_c + grow, bb_c + grow))
    masks[2] &= has_cavity
    if not torso.all():  # thighs below the pelvic floor: fat over muscle, no cavity
        n = int((~torso).sum())
        for k, grow in ((0, 1.3 * fat[:n]), (1, 0.0 * fat[:n])):
            width = _half_width(Y - 5, 70 + grow, 70 + grow, 70 + grow)
            masks[k][:n] = (np.abs(X - 92) < width) | (np.abs(X + 92) < width)
        masks[2][:n] = False
    cls = masks[0].view(np.uint8) * np.uint8(SUBFAT)  # nested masks: 20 fat, 21 muscle, 22 cavity
    cls += masks[1].view(np.uint8)
    cls += masks[2].view(np.uint8)
    canvas.cls[...] = cls
    del masks, cls
    # diaphragm: thoracic cavity above the dome, a muscle sheet just below it
    dome = _dome(an, X, Y)
    slab = zs > float(dome.min()) - 6
    if slab.any():
        s = slice(int(np.argmax(slab)), len(zs))
        view = canvas.cls[s]
        cavity = view == CAVITY
        above = Z[s] > dome
        view[cavity & above] = THORAX
        view[cavity & ~above & (Z[s] > dome - 5)] = DIAPH


def _paint_chain(canvas, chain, code, allowed, warp=None, width=0.0):
    """Paint where sdf < width (nominal mm); returns (slices, sdf) for sub-structures."""
    result = _chain_sdf(canvas, chain, warp)
    if result is None:
        return None
    sl, sdf = result
    canvas.paint(sl, sdf < width, code, allowed)
    return result


def _paint_skeleton(canvas: _Canvas, an: _Anatomy):
    bone_ok = _lut([CAVITY, THORAX, DIAPH, MEDIAST, MUSCLE, SUBFAT])
    # the column behind the vertebral bodies is muscle, never cavity or lung
    sl = canvas.box((-32, 40, -270), (32, 140, 600))
    if sl is not None:
        Z, Y, X = canvas.coords(sl)
        canvas.paint(sl, (Y > 46) & (np.abs(X) < 30), MUSCLE, _lut([CAVITY, THORAX, DIAPH]))
    # spine: vertebral bodies, discs, canal, posterior elements
    sl = canvas.box((-60, 20, -270), (60, 125, 600))
    if sl is not None:
        Z, Y, X = canvas.coords(sl)
        z = Z[:, 0, 0]
        a = np.interp(z, [-270, -170, 60, 140], [40, 26, 24, 17]).astype(np.float32)[:, None, None]
        b = np.interp(z, [-270, -170, 60, 140], [16, 19, 18, 15]).astype(np.float32)[:, None, None]
        yc = (np.interp(z, [-270, -170, 0, 140, 400], [88, 58, 46, 52, 50])).astype(np.float32)[:, None, None]
        frac = np.mod((Z - 4.0) / 32.0, 1.0)
        disc = (frac < 0.2) & (Z > -175)
        e = (X / a) ** 2 + ((Y - yc) / b) ** 2
        body = e < 1
        code = np.where(disc, np.uint8(DISC), np.where(e > (1 - 3.0 / b) ** 2, np.uint8(CORTEX), np.uint8(MARROW)))
        canvas.paint(sl, body, code, bone_ok)
        canal_y = yc + b + 10
        rc = np.sqrt(X ** 2 + (Y - canal_y) ** 2)
        posterior = (Z > -175) & ~disc & (frac < 0.85)
        ring = posterior & (rc >= 9) & (rc < 15) & (Y > canal_y - 12)
        spinous = posterior & (np.abs(X) < 4) & (Y > canal_y + 10) & (Y < canal_y + 36)
        transverse = posterior & (frac > 0.4) & (frac < 0.65) & (np.abs(Y - canal_y + 4) < 4) & \
            (np.abs(X) > 10) & (np.abs(X) < 36)
        canvas.paint(sl, ring | spinous | transverse, CORTEX, bone_ok)
        canvas.paint(sl, (rc < 9) & (Z > -175), CSF, bone_ok)
    # ribs: sloping bands in the muscle wall from the costal margin to the apex
    sl = canvas.box((-200, -200, -40), (200, 200, 330))
    if sl is not None:
        Z, Y, X = canvas.coords(sl)
        z = Z[:, 0, 0].astype(np.float64)
        cav_a = np.interp(z, [-120, 0, 80, 160, 330], [128, 135, 135, 130, 120]) * an.cavity["a"]
        cav_bf = np.interp(z, [-120, 0, 80, 160, 330], [84, 88, 90, 85, 80]) * an.cavity["b"]
        cav_bb = np.interp(z, [-120, 0, 80, 160, 330], [94, 100, 100, 100, 95]) * an.cavity["b"]
        inner = _half_width(Y, cav_a + 1, cav_bf + 1, cav_bb + 1)
        outer = _half_width(Y, cav_a + 9, cav_bf + 9, cav_bb + 9)
        z_margin = -30 + 110 * np.clip(-Y / 100.0, 0, 1)  # the costal margin rises anteriorly
        band = (np.mod((Z + 0.45 * (100 - Y)) / 36.0, 1.0) < 0.3) & (Z > z_margin)  # (nz, ny, 1)
        ax = np.abs(X)
        canvas.paint(sl, (ax >= inner) & (ax < outer) & band & (ax > 12), RIB, bone_ok)
    # pelvis: iliac wings, sacrum, femoral heads, necks, shafts, pubic and ischial rami
    sl = canvas.box((-220, -120, -700), (220, 130, -120))
    if sl is not None:
        Z, Y, X = canvas.coords(sl)
        for sign in (-1, 1):
            depth = np.clip((-130 - Z) / 110.0, 0, 1)  # the wing narrows towards the acetabulum
            e = ((X - sign * 40) / (85.0 - 25 * depth)) ** 2 + ((Y - 60) / (75.0 - 20 * depth)) ** 2
            wing = (e > 0.82) & (e < 1.0) & (Y < 62) & (Y > -25 + 40 * depth) & (sign * X > 45) \
                & (Z < -130) & (Z > -240)
            canvas.paint(sl, wing, RIB, bone_ok)
        below = np.maximum(-170 - Z, 0)  # the sacrum narrows and tilts backwards downwards
        sacrum = ((X / (42.0 - 0.2 * below)) ** 2 + ((Y - (64 + 0.35 * below)) / 16.0) ** 2 < 1) \
            & (Z < -170) & (Z > -265)
        canvas.paint(sl, sacrum, MARROW, bone_ok)
    for sign in (-1, 1):
        head = _Chain(np.array([(sign * 92, -5, -282), (sign * 92, -5, -282.1)]), np.array([24.0, 24.0]))
        _paint_chain(canvas, head, MARROW, bone_ok)
        socket = _Chain(np.array([(sign * 80, -5, -276), (sign * 80, -5, -276.1)]), np.array([31.0, 31.0]))
        _paint_chain(canvas, socket, CORTEX, _lut([CAVITY, MUSCLE]))
        neck = _Chain(np.array([(sign * 92, -5, -282), (sign * 128, 5, -300)]), np.array([15.0, 15.0]))
        _paint_chain(canvas, neck, MARROW, bone_ok)
        shaft = _Chain(np.array([(sign * 128, 5, -300), (sign * 112, 10, -700)]), np.array([14.0, 13.0]))
        result = _paint_chain(canvas, shaft, CORTEX, bone_ok)
        if result is not None:
            canvas.paint(result[0], result[1] < -5, YELLOW_MARROW, _lut([CORTEX]))
        for a, b, r in (((sign * 78, -25, -285), (sign * 12, -68, -300), 9.0),
                        ((sign * 82, 10, -292), (sign * 60, 35, -330), 12.0)):
            _paint_chain(canvas, _Chain(np.array([a, b]), np.array([r, r])), RIB, bone_ok)
    # muscles (reserved: organs do not take them)
    for side in ("r", "l"):
        for name in ("psoas", "paraspinal", "quadratus"):
            _paint_chain(canvas, an.chains[f"{name}_{side}"], MUSCLE, _lut([CAVITY, THORAX, DIAPH]))
    bladder = _Ellipsoid(np.array([0.0, -48.0, -262.0]), np.eye(3), np.array([45.0, 36.0, 34.0]))
    sl = _ellipsoid_box(canvas, [bladder], None)
    if sl is not None:
        canvas.paint(sl, bladder.r2(*canvas.coords(sl)) < 1, BLADDER, _FREE)
    # posterior mediastinum fat band (the aorta and oesophagus are painted into it later)
    sl = canvas.box((-40, -20, 60), (50, 60, 600))
    if sl is not None:
        Z, Y, X = canvas.coords(sl)
        canvas.paint(sl, ((X - 8) / 32) ** 2 + ((Y - 22) / 34) ** 2 < 1, MEDIAST, _lut([THORAX]))


def _paint_ellipsoid_organ(canvas, ellipsoids, warp, code_fn, allowed=_FREE, cut=None):
    sl = _ellipsoid_box(canvas, ellipsoids, warp)
    if sl is None:
        return
    Z, Y, X = canvas.coords(sl)
    sines = warp.sines(Z, Y, X)
    r2s = [e.r2(Z, Y, X, warp, sines) for e in ellipsoids]
    code, mask = code_fn(r2s, (Z, Y, X))
    if cut is not None:
        mask &= cut(Z, Y, X)
    canvas.paint(sl, mask, code, allowed)


def _paint_organs(canvas: _Canvas, an: _Anatomy):
    E, C, W = an.ell, an.chains, an.warps
    _paint_chain(canvas, C["aorta"], 5, _FREE_TUBE, W["aorta"])
    _paint_chain(canvas, C["ivc"], 6, _FREE_TUBE, W["ivc"])
    _paint_chain(canvas, C["esophagus"], 10, _FREE_TUBE, W["esophagus"])
    _paint_ellipsoid_organ(canvas, [E["adrenal_r"]], W["adrenal_r"], lambda r, p: (7, r[0] < 1), _lut([CAVITY, DIAPH]))
    _paint_ellipsoid_organ(canvas, [E["adrenal_l"]], W["adrenal_l"], lambda r, p: (8, r[0] < 1), _lut([CAVITY, DIAPH]))
    _paint_ellipsoid_organ(canvas, [E["gallbladder"]], W["gallbladder"], lambda r, p: (9, r[0] < 1))
    _paint_chain(canvas, C["pancreas"], 4, _FREE, W["pancreas"])
    result = _paint_chain(canvas, C["duodenum"], 12, _FREE, W["duodenum"])
    if result is not None:
        canvas.paint(result[0], result[1] < -4, DUOD_LUMEN, _lut([12]))
    for side, code, medulla in (("r", 2, KID_R_MED), ("l", 13, KID_L_MED)):
        def kidney(r2s, _p, code=code, medulla=medulla):
            inside = (r2s[0] < 1) & (r2s[1] >= 1)
            return np.where(r2s[0] < 0.5, np.uint8(medulla), np.uint8(code)), inside
        _paint_ellipsoid_organ(canvas, [E[f"kidney_{side}"], E[f"hilum_{side}"]], W[f"kidney_{side}"], kidney)
    _paint_ellipsoid_organ(canvas, [E["spleen"]], W["spleen"], lambda r, p: (3, r[0] < 1))
    result = _paint_chain(canvas, C["stomach"], 11, _FREE, W["stomach"])
    if result is not None:
        sl, sdf = result
        Z, Y, X = canvas.coords(sl)
        lumen = np.where(Y < an.gas_level, np.uint8(STOM_GAS), np.uint8(STOM_FLUID))
        canvas.paint(sl, sdf < -5, lumen, _lut([11]))
    cut = an.liver_cut

    def liver(r2s, p):
        Z, Y, X = p
        inside = (r2s[0] < 1) | (r2s[1] < 1)
        inside &= Z > cut + 0.55 * (X + 130)  # inferior surface rises medially
        inside &= ~((Y > 22) & (X > -38))  # nothing behind the IVC / next to the spine
        return 1, inside
    _paint_ellipsoid_organ(canvas, [E["liver_right"], E["liver_left"]], W["liver"], liver)
    for vein in C["hepatic_veins"]:
        _paint_chain(canvas, vein, LIVER_VESSEL, _lut([1]), W["liver"])


def _paint_tumors(canvas: _Canvas, an: _Anatomy, probability: float, min_radius: float) -> tuple[int, ...]:
    E, C = an.ell, an.chains
    hosts, index = set(), 0
    for tumor in an.tumors:
        host = tumor["host"]
        if not tumor["active"] or tumor["gate"] >= probability:
            continue
        radius = max(tumor["radius"], min_radius)
        host_ok = _lut(_HOST_CODES[host])
        centre = None
        for cand in tumor["candidates"]:
            point = _tumor_candidate(host, cand, E, C)
            code = canvas.code_at(point)
            if code < 0 or not host_ok[code]:
                continue
            ring = [canvas.code_at(point + 0.7 * radius * d) for d in _RING]
            inside = np.mean([c >= 0 and host_ok[c] for c in ring])
            if inside >= (0.35 if tumor["exophytic"] else 0.7):
                centre = point
                break
        if centre is None:
            continue
        ellipsoid = _Ellipsoid(centre, _rotation(tumor["angles"]), radius * tumor["semi"])
        sl = _ellipsoid_box(canvas, [ellipsoid], tumor["warp"])
        if sl is None:
            continue
        Z, Y, X = canvas.coords(sl)
        r2 = ellipsoid.r2(Z, Y, X, tumor["warp"], tumor["warp"].sines(Z, Y, X))
        code = TUMOR_CODE0 + 2 * index
        codes = np.where((r2 < 0.2) & tumor["necrotic"] & (radius > 20), np.uint8(code + 1), np.uint8(code))
        allowed = _lut(list(_HOST_CODES[host]) + ([CAVITY] if tumor["exophytic"] else []))
        if canvas.paint(sl, r2 < 1, codes, allowed):
            hosts.add(host)
            tumor["code"], tumor["index"] = code, index
            index += 1
    return tuple(sorted(hosts))


# 14 unit directions (6 axes, 8 diagonals): probes of how deep a tumour centre lies in its host
_RING = np.concatenate([np.vstack([np.eye(3), -np.eye(3)]),
                        np.array([(a, b, c) for a in (1, -1) for b in (1, -1) for c in (1, -1)]) / math.sqrt(3)])


def _tumor_candidate(host, cand, E, C) -> np.ndarray:
    """A point inside the host's primitive from 4 uniforms (grid-independent)."""
    if host == 4:
        chain = C["pancreas"]
        seg = min(int(cand[0] * (len(chain.nodes) - 1)), len(chain.nodes) - 2)
        t = cand[1]
        point = chain.nodes[seg] * (1 - t) + chain.nodes[seg + 1] * t
        r = chain.radii[seg] * (1 - t) + chain.radii[seg + 1] * t
        angle = 2 * math.pi * cand[2]
        return point + 0.5 * r * cand[3] * np.array([math.cos(angle), 0.0, math.sin(angle)])
    ellipsoid = {1: E["liver_right"] if cand[0] < 0.8 else E["liver_left"], 2: E["kidney_r"],
                 13: E["kidney_l"]}[host]
    phi, cos_theta = 2 * math.pi * cand[1], 2 * cand[2] - 1
    sin_theta = math.sqrt(max(0.0, 1 - cos_theta ** 2))
    direction = np.array([sin_theta * math.cos(phi), sin_theta * math.sin(phi), cos_theta])
    local = direction * ellipsoid.semi * 0.85 * cand[3] ** (1 / 3)
    return ellipsoid.center + ellipsoid.axes.T @ local


def _paint_late(canvas: _Canvas, an: _Anatomy):
    """Unlabelled vessels, heart and lungs: they only take what the organs left."""
    C = an.chains
    vessel_ok = _lut([CAVITY, MUSCLE, SUBFAT])
    for name in ("portal", "splenic_v", "smv", "renal_v_l", "renal_v_r"):
        _paint_chain(canvas, C[name], PORTAL if name in ("portal", "splenic_v", "smv") else VEIN, _FREE)
    _paint_chain(canvas, C["sma"], ARTERY, _FREE)
    for side in ("r", "l"):
        _paint_chain(canvas, C[f"iliac_a_{side}"], ARTERY, vessel_ok)
        _paint_chain(canvas, C[f"iliac_v_{side}"], VEIN, vessel_ok)
    dome_c = float(_dome(an, np.array(12.0), np.array(-35.0)))
    heart = _Ellipsoid(np.array([12.0, -38.0, dome_c + 58]), _rotation((0.3, 0.0, -0.5)), np.array([60.0, 48.0, 60.0]))
    sl = _ellipsoid_box(canvas, [heart], None)
    if sl is not None:
        canvas.paint(sl, heart.r2(*canvas.coords(sl)) < 1, HEART, _lut([THORAX, MEDIAST]))
    sl = canvas.box((-400, -400, 20), (400, 400, 600))
    if sl is not None:
        view = canvas.cls[sl]
        view[view == THORAX] = LUNG


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

    def __init__(self, canvas: _Canvas, an: _Anatomy):
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


def _paint_bowel(canvas: _Canvas, an: _Anatomy, noise: np.ndarray, z0: int, z1: int):
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


def _code_tables(an: _Anatomy, phase: str):
    hu = np.full(256, -1000.0, dtype=np.float32)
    label = np.zeros(256, dtype=np.uint8)
    texture = np.full(256, 4.0, dtype=np.float32)
    for code, value in an.hu[phase].items():
        hu[code] = value
    for code in ORGAN_LABELS:
        label[code] = code
    for code, lbl in _SUB_CODE_LABEL.items():
        label[code] = lbl
    for code, amp in _TEXTURE.items():
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

    an = _draw_anatomy(np.random.default_rng(np.random.SeedSequence([int(seed), 1])))
    phase = phase or an.phase_draw
    layout = _layout(shape, spacing, direction, an, an.fov_draw if fov == "random" else fov)
    canvas = _Canvas(*(a / layout.scale for a in layout.axes_phys))
    _paint_body(canvas, an)
    _paint_skeleton(canvas, an)
    _paint_organs(canvas, an)
    min_radius = 0.6 * max(spacing) / layout.scale
    hosts = _paint_tumors(canvas, an, tumor_probability, min_radius) if tumors else ()
    _paint_late(canvas, an)
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


def _intensities(canvas: _Canvas, an: _Anatomy, phase: str):
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


def _finish_image(image: np.ndarray, an: _Anatomy, rng) -> np.ndarray:
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


def _to_index_order(array: np.ndarray, layout: _Layout) -> np.ndarray:
    out = np.transpose(array, layout.permutation)
    if layout.flips:
        out = np.flip(out, axis=layout.flips)
    return np.ascontiguousarray(out)


def _resample_oblique(image, labels, layout: _Layout):
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


def _benchmark() -> None:
    """Wall and CPU seconds (CPU time is what one free core would take on a shared machine)."""
    make_phantom(0, shape=(8, 16, 16))  # imports and first-call overheads
    for shape, spacing in (((64, 128, 128), (2.5, 1.6, 1.6)), ((300, 512, 512), (2.5, 0.8, 0.8))):
        wall, cpu = time.perf_counter(), time.process_time()
        phantom = make_phantom(1, shape=shape, spacing=spacing)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"{shape} at {spacing} mm: {wall:.2f} s wall, {cpu:.2f} s CPU, "  # noqa: T201
              f"tumour hosts {phantom.tumor_hosts}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write one synthetic CT phantom, or time generation.")
    parser.add_argument("image", nargs="?", help="output image path (.nii.gz)")
    parser.add_argument("--labels", help="output label path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phase", choices=PHASES)
    parser.add_argument("--fov", default="abdomen", choices=FOVS + ("random",))
    parser.add_argument("--benchmark", action="store_true")
    args = parser.parse_args()
    if args.benchmark:
        _benchmark()
    elif args.image:
        write_phantom(make_phantom(args.seed, phase=args.phase, fov=args.fov), args.image, args.labels)
    else:
        parser.error("give an image path or --benchmark")
