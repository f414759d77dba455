"""Painting the anatomy onto the canvas: body wall, skeleton, the 13 organs in a fixed precedence
(an organ only takes still-free cavity), tumours in their hosts, and late structures.
"""
from __future__ import annotations

import math

import numpy as np

from phantom.codes import (
    ARTERY, BLADDER, CAVITY, CORTEX, CSF, DIAPH, DISC, DUOD_LUMEN, HEART, HOST_CODES, KID_L_MED, KID_R_MED,
    LIVER_VESSEL, LUNG, MARROW, MEDIAST, MUSCLE, PORTAL, RIB, STOM_FLUID, STOM_GAS, SUBFAT, THORAX,
    TUMOR_CODE0, VEIN, YELLOW_MARROW,
)
from phantom.shapes import Canvas, Chain, chain_sdf, Ellipsoid, ellipsoid_box, lut, rotation
from phantom.anatomy import Anatomy


# ---- painting ---------------------------------------------------------------------------------

_FREE = lut([CAVITY])
_FREE_TUBE = lut([CAVITY, THORAX, DIAPH, MEDIAST])


def _half_width(Y, a, b_front, b_back):
    """Half-width in x, per (z, y) row, of the superellipse |x/a|^2.2 + |y/b|^q < 1 (-1: row outside).

    q is 2.2 in front and 3 behind (a flat back on the table). a, b_* are per-z arrays; the result has
    shape (nz, ny, 1), so that `abs(X) < width` tests a whole box with one cheap comparison.
    """
    a, b_front, b_back = (np.asarray(v, np.float64)[:, None, None] for v in (a, b_front, b_back))
    y = np.asarray(Y, np.float64)
    yt = np.where(y < 0, np.abs(y / b_front) ** 2.2, np.abs(y / b_back) ** 3.0)
    return np.where(yt < 1, a * np.clip(1 - yt, 0, None) ** (1 / 2.2), -1.0).astype(np.float32)


def _dome(an: Anatomy, X, Y):
    """Nominal z of the diaphragm over (y, x): two domes (right higher), lower in front and behind."""
    right, left = an.dome
    z = 60.0 + (52.0 + right) * np.exp(-((X + 50) / 50) ** 2) + (42.0 + left) * np.exp(-((X - 55) / 48) ** 2)
    return (z - 0.0035 * Y ** 2 - 0.3 * np.maximum(Y - 30.0, 0.0)).astype(np.float32)


def paint_body(canvas: Canvas, an: Anatomy):
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
    result = chain_sdf(canvas, chain, warp)
    if result is None:
        return None
    sl, sdf = result
    canvas.paint(sl, sdf < width, code, allowed)
    return result


def paint_skeleton(canvas: Canvas, an: Anatomy):
    """Bones, the muscles organs may not take, the bladder and the posterior mediastinal fat, in this order."""
    bone_ok = lut([CAVITY, THORAX, DIAPH, MEDIAST, MUSCLE, SUBFAT])
    # the column behind the vertebral bodies is muscle, never cavity or lung
    sl = canvas.box((-32, 40, -270), (32, 140, 600))
    if sl is not None:
        Z, Y, X = canvas.coords(sl)
        canvas.paint(sl, (Y > 46) & (np.abs(X) < 30), MUSCLE, lut([CAVITY, THORAX, DIAPH]))
    _paint_spine(canvas, bone_ok)
    _paint_ribs(canvas, an, bone_ok)
    _paint_pelvis(canvas, bone_ok)
    # muscles (reserved: organs do not take them)
    for side in ("r", "l"):
        for name in ("psoas", "paraspinal", "quadratus"):
            _paint_chain(canvas, an.chains[f"{name}_{side}"], MUSCLE, lut([CAVITY, THORAX, DIAPH]))
    bladder = Ellipsoid(np.array([0.0, -48.0, -262.0]), np.eye(3), np.array([45.0, 36.0, 34.0]))
    sl = ellipsoid_box(canvas, [bladder], None)
    if sl is not None:
        canvas.paint(sl, bladder.r2(*canvas.coords(sl)) < 1, BLADDER, _FREE)
    # posterior mediastinum fat band (the aorta and oesophagus are painted into it later)
    sl = canvas.box((-40, -20, 60), (50, 60, 600))
    if sl is not None:
        Z, Y, X = canvas.coords(sl)
        canvas.paint(sl, ((X - 8) / 32) ** 2 + ((Y - 22) / 34) ** 2 < 1, MEDIAST, lut([THORAX]))


def _paint_spine(canvas: Canvas, bone_ok: np.ndarray) -> None:
    # spine: vertebral bodies, discs, canal, posterior elements
    sl = canvas.box((-60, 20, -270), (60, 125, 600))
    if sl is None:
        return
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


def _paint_ribs(canvas: Canvas, an: Anatomy, bone_ok: np.ndarray) -> None:
    # ribs: sloping bands in the muscle wall from the costal margin to the apex
    sl = canvas.box((-200, -200, -40), (200, 200, 330))
    if sl is None:
        return
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


def _paint_pelvis(canvas: Canvas, bone_ok: np.ndarray) -> None:
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
        head = Chain(np.array([(sign * 92, -5, -282), (sign * 92, -5, -282.1)]), np.array([24.0, 24.0]))
        _paint_chain(canvas, head, MARROW, bone_ok)
        socket = Chain(np.array([(sign * 80, -5, -276), (sign * 80, -5, -276.1)]), np.array([31.0, 31.0]))
        _paint_chain(canvas, socket, CORTEX, lut([CAVITY, MUSCLE]))
        neck = Chain(np.array([(sign * 92, -5, -282), (sign * 128, 5, -300)]), np.array([15.0, 15.0]))
        _paint_chain(canvas, neck, MARROW, bone_ok)
        shaft = Chain(np.array([(sign * 128, 5, -300), (sign * 112, 10, -700)]), np.array([14.0, 13.0]))
        result = _paint_chain(canvas, shaft, CORTEX, bone_ok)
        if result is not None:
            canvas.paint(result[0], result[1] < -5, YELLOW_MARROW, lut([CORTEX]))
        for a, b, r in (((sign * 78, -25, -285), (sign * 12, -68, -300), 9.0),
                        ((sign * 82, 10, -292), (sign * 60, 35, -330), 12.0)):
            _paint_chain(canvas, Chain(np.array([a, b]), np.array([r, r])), RIB, bone_ok)


def _paint_ellipsoid_organ(canvas, ellipsoids, warp, code_fn, allowed=_FREE, cut=None):
    sl = ellipsoid_box(canvas, ellipsoids, warp)
    if sl is None:
        return
    Z, Y, X = canvas.coords(sl)
    sines = warp.sines(Z, Y, X)
    r2s = [e.r2(Z, Y, X, warp, sines) for e in ellipsoids]
    code, mask = code_fn(r2s, (Z, Y, X))
    if cut is not None:
        mask &= cut(Z, Y, X)
    canvas.paint(sl, mask, code, allowed)


def paint_organs(canvas: Canvas, an: Anatomy):
    E, C, W = an.ell, an.chains, an.warps
    _paint_chain(canvas, C["aorta"], 5, _FREE_TUBE, W["aorta"])
    _paint_chain(canvas, C["ivc"], 6, _FREE_TUBE, W["ivc"])
    _paint_chain(canvas, C["esophagus"], 10, _FREE_TUBE, W["esophagus"])
    _paint_ellipsoid_organ(canvas, [E["adrenal_r"]], W["adrenal_r"], lambda r, p: (7, r[0] < 1), lut([CAVITY, DIAPH]))
    _paint_ellipsoid_organ(canvas, [E["adrenal_l"]], W["adrenal_l"], lambda r, p: (8, r[0] < 1), lut([CAVITY, DIAPH]))
    _paint_ellipsoid_organ(canvas, [E["gallbladder"]], W["gallbladder"], lambda r, p: (9, r[0] < 1))
    _paint_chain(canvas, C["pancreas"], 4, _FREE, W["pancreas"])
    result = _paint_chain(canvas, C["duodenum"], 12, _FREE, W["duodenum"])
    if result is not None:
        canvas.paint(result[0], result[1] < -4, DUOD_LUMEN, lut([12]))
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
        canvas.paint(sl, sdf < -5, lumen, lut([11]))
    cut = an.liver_cut

    def liver(r2s, p):
        Z, Y, X = p
        inside = (r2s[0] < 1) | (r2s[1] < 1)
        inside &= Z > cut + 0.55 * (X + 130)  # inferior surface rises medially
        inside &= ~((Y > 22) & (X > -38))  # nothing behind the IVC / next to the spine
        return 1, inside
    _paint_ellipsoid_organ(canvas, [E["liver_right"], E["liver_left"]], W["liver"], liver)
    for vein in C["hepatic_veins"]:
        _paint_chain(canvas, vein, LIVER_VESSEL, lut([1]), W["liver"])


def paint_tumors(canvas: Canvas, an: Anatomy, probability: float, min_radius: float) -> tuple[int, ...]:
    E, C = an.ell, an.chains
    hosts, index = set(), 0
    for tumor in an.tumors:
        host = tumor["host"]
        if not tumor["active"] or tumor["gate"] >= probability:
            continue
        radius = max(tumor["radius"], min_radius)
        host_ok = lut(HOST_CODES[host])
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
        ellipsoid = Ellipsoid(centre, rotation(tumor["angles"]), radius * tumor["semi"])
        sl = ellipsoid_box(canvas, [ellipsoid], tumor["warp"])
        if sl is None:
            continue
        Z, Y, X = canvas.coords(sl)
        r2 = ellipsoid.r2(Z, Y, X, tumor["warp"], tumor["warp"].sines(Z, Y, X))
        code = TUMOR_CODE0 + 2 * index
        codes = np.where((r2 < 0.2) & tumor["necrotic"] & (radius > 20), np.uint8(code + 1), np.uint8(code))
        allowed = lut(list(HOST_CODES[host]) + ([CAVITY] if tumor["exophytic"] else []))
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


def paint_late(canvas: Canvas, an: Anatomy):
    """Unlabelled vessels, heart and lungs: they only take what the organs left."""
    C = an.chains
    vessel_ok = lut([CAVITY, MUSCLE, SUBFAT])
    for name in ("portal", "splenic_v", "smv", "renal_v_l", "renal_v_r"):
        _paint_chain(canvas, C[name], PORTAL if name in ("portal", "splenic_v", "smv") else VEIN, _FREE)
    _paint_chain(canvas, C["sma"], ARTERY, _FREE)
    for side in ("r", "l"):
        _paint_chain(canvas, C[f"iliac_a_{side}"], ARTERY, vessel_ok)
        _paint_chain(canvas, C[f"iliac_v_{side}"], VEIN, vessel_ok)
    dome_c = float(_dome(an, np.array(12.0), np.array(-35.0)))
    heart = Ellipsoid(np.array([12.0, -38.0, dome_c + 58]), rotation((0.3, 0.0, -0.5)), np.array([60.0, 48.0, 60.0]))
    sl = ellipsoid_box(canvas, [heart], None)
    if sl is not None:
        canvas.paint(sl, heart.r2(*canvas.coords(sl)) < 1, HEART, lut([THORAX, MEDIAST]))
    sl = canvas.box((-400, -400, 20), (400, 400, 600))
    if sl is not None:
        view = canvas.cls[sl]
        view[view == THORAX] = LUNG
