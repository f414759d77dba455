"""The patient: every random number of a phantom is drawn here, before any grid is known, so that a
seed gives the same anatomy on every grid; then the layout (scale, origin, index order) on the grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from inference.core.geometry import Geometry
from inference.core.labels import TUMOR_HOSTS
from phantom.codes import (
    AIR, ARTERY, CORTEX, FOV_CENTRE_Z, FOVS, GAS, HEART, MAX_TUMORS_PER_HOST, PHASE_HU, PHASES, STOM_GAS,
    TUMOR_CANDIDATES,
)
from phantom.shapes import Chain, Ellipsoid, frame, rotation, Warp


# ---- the patient: every random number is drawn here, before any geometry is known ------------

@dataclass
class Anatomy:
    phase_draw: str = ""
    fov_draw: str = ""
    size: float = 1.0
    fill: float = 0.85
    z_jitter: float = 0.0
    fat: float = 20.0
    muscle: float = 12.0
    cavity: dict = field(default_factory=dict)
    dome: tuple = (0.0, 0.0)
    ell: dict = field(default_factory=dict)  # name -> Ellipsoid
    chains: dict = field(default_factory=dict)  # name -> Chain
    warps: dict = field(default_factory=dict)  # name -> Warp
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
    axes = (rotation(rng.normal(0, angle_sd, 3)) @ np.asarray(axes, np.float64).T).T
    return Ellipsoid(center, axes, semi)


def _draw_chain(rng, nodes, radii, jitter=3.0, radius_scale=0.1):
    nodes = np.asarray(nodes, np.float64) + rng.normal(0, jitter, (len(nodes), 3))
    radii = np.asarray(radii, np.float64) * rng.uniform(1 - radius_scale, 1 + radius_scale) \
        * rng.uniform(0.95, 1.05, len(radii))
    return Chain(nodes, radii)


def draw_anatomy(rng) -> Anatomy:
    """Every random number of a phantom, in a fixed order (the helpers run one after another)."""
    an = Anatomy()
    an.phase_draw = str(rng.choice(PHASES))
    an.fov_draw = str(rng.choice(FOVS))
    an.size = float(rng.uniform(0.9, 1.1))
    an.fill = float(rng.uniform(0.8, 0.92))
    an.z_jitter = float(rng.uniform(-8, 8))
    an.fat = float(rng.uniform(8, 32))
    an.muscle = float(rng.uniform(10, 14))
    an.cavity = {"a": rng.uniform(0.96, 1.04), "b": rng.uniform(0.96, 1.04)}
    an.dome = (float(rng.normal(0, 5)), float(rng.normal(0, 5)))
    _draw_organs(rng, an)
    _draw_other_structures(rng, an)
    _draw_warps(rng, an)
    _draw_intensities(rng, an)
    _draw_tumors(rng, an)
    return an


def _draw_organs(rng, an: Anatomy) -> None:
    E, C = an.ell, an.chains
    I3 = np.eye(3)
    # vessels and tubes (nominal adult mm; y anterior < 0 < posterior)
    C["aorta"] = _draw_chain(rng, [(28, 28, 420), (27, 26, 160), (18, 14, 70), (12, 10, 0), (8, 12, -80),
                                   (6, 14, -120)], [12, 12, 11.5, 11, 10, 9])
    C["ivc"] = _draw_chain(rng, [(-14, 16, -125), (-21, 12, -60), (-24, 12, 0), (-24, 13, 50), (-20, 8, 92),
                                 (-14, 0, 108)], [10, 12, 13, 14, 15, 15])
    C["esophagus"] = _draw_chain(rng, [(4, 12, 420), (6, 12, 200), (10, 6, 112), (22, -6, 84), (36, -16, 66)],
                                 [11, 11, 11, 11.5, 12], jitter=2.0)
    E["adrenal_r"] = _draw_ellipsoid(rng, (-42, 32, 42), frame((0.2, 0.1, 1), (1, -0.8, 0)), (10, 17, 26), 3)
    E["adrenal_l"] = _draw_ellipsoid(rng, (44, 30, 36), frame((-0.2, 0.1, 1), (1, 0.8, 0)), (10, 17, 26), 3)
    E["gallbladder"] = _draw_ellipsoid(rng, (-45, -50, 2), frame((0.15, -0.45, -0.88), (1, 0, 0)), (17, 18, 38))
    C["pancreas"] = _draw_chain(rng, [(-32, -10, -20), (-28, -22, -5), (-5, -34, 2), (28, -26, 10), (62, 0, 22),
                                      (80, 12, 30)], [15, 17, 12, 12, 10, 8])
    C["duodenum"] = _draw_chain(rng, [(-6, -50, 6), (-32, -40, 10), (-52, -22, 0), (-56, -12, -30),
                                      (-46, -10, -52), (-10, -20, -58), (18, -22, -52), (35, -26, -35),
                                      (40, -28, -15)], [12, 13, 12, 12, 12, 12, 12, 11, 11])
    for side, sign, z in (("r", -1, -25), ("l", 1, -12)):
        axes = frame((-sign * 0.25, 0.15, 1), (sign * 1, -0.5, 0))  # upper pole medial/posterior
        E[f"kidney_{side}"] = _draw_ellipsoid(rng, (sign * 72, 55, z), axes, (27, 22, 52), 4, 0.08)
        hilum_center = E[f"kidney_{side}"].center + np.array([-sign * 24.0, -10.0, 0.0])
        E[f"hilum_{side}"] = _draw_ellipsoid(rng, hilum_center, I3, (13, 10, 17), 1.5, 0.1)
    E["spleen"] = _draw_ellipsoid(rng, (95, 28, 48), frame((0.55, -0.7, -0.45), (0.8, 0.6, 0)), (20, 40, 56))
    C["stomach"] = _draw_chain(rng, [(36, -16, 66), (62, 2, 88), (64, -34, 48), (55, -55, 12), (22, -60, -4),
                                     (-6, -50, 6)], [14, 30, 30, 27, 20, 12], jitter=4.0)
    E["liver_right"] = _draw_ellipsoid(rng, (-62, 0, 45), I3, (76, 80, 78), 4, 0.06)
    E["liver_left"] = _draw_ellipsoid(rng, (12, -52, 62), rotation((0, 0, -0.2)), (58, 30, 36), 4, 0.08)
    an.liver_cut = float(rng.uniform(-34, -22))
    hepatic = []
    for end in ((-110, -20, 50), (-60, -50, 58), (0, -52, 70)):
        hepatic.append(_draw_chain(rng, [(-20, 8, 94), end], [6, 3], jitter=5.0))
    C["hepatic_veins"] = hepatic


def _draw_other_structures(rng, an: Anatomy) -> None:
    C = an.chains
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


def _draw_warps(rng, an: Anatomy) -> None:
    # organ-level deformation fields: amplitude ~ 8-12 % of the size, wavelength ~ 2-3 sizes
    for name, amplitude, wavelength in (("aorta", 2.0, 150), ("ivc", 2.5, 120), ("esophagus", 2.5, 100),
                                        ("adrenal_r", 2.0, 50), ("adrenal_l", 2.0, 50), ("gallbladder", 3.0, 70),
                                        ("pancreas", 4.0, 90), ("duodenum", 4.0, 90), ("kidney_r", 3.0, 90),
                                        ("kidney_l", 3.0, 90), ("spleen", 5.0, 100), ("stomach", 6.0, 120),
                                        ("liver", 9.0, 160)):
        an.warps[name] = Warp.draw(rng, amplitude, wavelength)


def _draw_intensities(rng, an: Anatomy) -> None:
    # intensities
    aorta = {"plain": rng.uniform(35, 50), "arterial": rng.uniform(380, 520), "venous": rng.uniform(160, 200)}
    for i, phase in enumerate(PHASES):
        jitters = rng.normal(0, 5, len(PHASE_HU))
        table = {code: values[i] + (jit if code not in (AIR, GAS, STOM_GAS, CORTEX) else 0.0)
                 for (code, values), jit in zip(sorted(PHASE_HU.items()), jitters)}
        table[5] = table[ARTERY] = aorta[phase]
        table[HEART] = {"plain": 40.0, "arterial": 0.8 * aorta["arterial"], "venous": 0.9 * aorta["venous"]}[phase]
        an.hu[phase] = table
    an.texture_seed = int(rng.integers(2**31))
    an.noise_sd = float(rng.uniform(10, 20))
    an.blur_sigma = float(rng.uniform(0.5, 1.0))
    an.gas_level = float(rng.uniform(-55, -35))
    an.bowel_threshold = float(rng.uniform(-0.2, 0.3))


def _draw_tumors(rng, an: Anatomy) -> None:
    # tumours: everything drawn for every host, whether used or not, so the stream never shifts
    limits = {1: 40.0, 2: 18.0, 4: 16.0, 13: 18.0}
    for host in TUMOR_HOSTS:
        gate = float(rng.random())
        count = int(rng.integers(1, MAX_TUMORS_PER_HOST + 1))
        sign = 1.0 if rng.random() < 0.35 else -1.0  # one lesion type per organ: all hypo- or all hyperdense
        for k in range(MAX_TUMORS_PER_HOST):
            radius = float(min(math.exp(rng.uniform(math.log(3), math.log(40))), limits[host]))
            an.tumors.append({
                "host": host, "gate": gate, "active": k < count, "radius": radius,
                "delta": float(rng.uniform(30, 80)) * sign,
                "exophytic": bool(rng.random() < 0.25), "necrotic": bool(rng.random() < 0.5),
                "candidates": rng.random((TUMOR_CANDIDATES, 4)),
                "semi": rng.uniform(0.85, 1.15, 3), "angles": rng.normal(0, 0.6, 3),
                "warp": Warp.draw(rng, 0.12 * radius, 2.5 * radius + 5),
            })


# ---- layout: grid, scale and origin -----------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    geometry: Geometry
    scale: float  # physical mm per nominal mm
    axes_phys: tuple  # canonical coordinates (z, y, x), physical mm, ascending
    permutation: tuple | None  # canonical axis for each array axis, or None (oblique)
    flips: tuple  # array axes to flip after the transpose


def _body_extent(an: Anatomy):
    """Nominal abdominal body half-width and the y range (anterior, posterior) of the outline."""
    wall = an.fat + an.muscle
    return 135.0 * an.cavity["a"] + wall, (-(88.0 * an.cavity["b"] + wall), 100.0 * an.cavity["b"] + wall)


def grid_layout(shape, spacing, direction, an: Anatomy, fov: str) -> Layout:
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
    centre = np.array([0.0, scale * (y_front + y_back) / 2, scale * (FOV_CENTRE_Z[fov] + an.z_jitter)])
    index_half = np.array([(n - 1) * s for n, s in zip(shape[::-1], spacing[::-1])]) / 2  # xyz index order
    origin = (centre - matrix @ index_half).astype(np.float32).astype(np.float64)  # float32-exact: NIfTI round trips
    geometry = Geometry(tuple(shape), tuple(spacing), tuple(origin), tuple(matrix.ravel()))
    axes_phys = tuple(centre[p] + (np.arange(n_phys[p]) - (n_phys[p] - 1) / 2) * step_phys[p] for p in (2, 1, 0))
    if is_permutation:
        permutation = tuple(2 - int(np.abs(c).argmax()) for c in columns)
        flips = tuple(axis for axis, c in enumerate(columns) if c[int(np.abs(c).argmax())] < 0)
    else:
        permutation, flips = None, ()
    return Layout(geometry, scale, axes_phys, permutation, flips)
