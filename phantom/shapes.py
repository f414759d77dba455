"""Geometry primitives of the phantom (sinusoidal warps, ellipsoids, tapered tube chains) and the
canvas they are painted on: a class-code volume on an axis-aligned grid in patient millimetres.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


# ---- geometry primitives ----------------------------------------------------------------------

def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def frame(primary, secondary) -> np.ndarray:
    """Rows: orthonormal axes (secondary', third, primary) from two rough directions."""
    w = _unit(primary)
    u = np.asarray(secondary, dtype=np.float64)
    u = _unit(u - (u @ w) * w)
    return np.stack([u, np.cross(w, u), w])


def rotation(angles) -> np.ndarray:
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Warp:
    """Low-frequency displacement d(p) = sum_m v_m sin(k_m . p + phase_m), in nominal mm."""
    k: np.ndarray  # (m, 3) xyz
    phase: np.ndarray  # (m,)
    v: np.ndarray  # (m, 3) xyz amplitudes

    @staticmethod
    def draw(rng, amplitude, wavelength, modes=3) -> "Warp":
        directions = rng.normal(size=(modes, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        k = directions * (2 * math.pi / (wavelength * rng.uniform(0.7, 1.3, size=(modes, 1))))
        return Warp(k, rng.uniform(0, 2 * math.pi, modes), rng.normal(size=(modes, 3)) * amplitude / math.sqrt(modes))

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
class Ellipsoid:
    center: np.ndarray  # xyz nominal mm
    axes: np.ndarray  # rows: local unit axes in xyz
    semi: np.ndarray  # semi-axes along the rows

    def half_extent(self) -> np.ndarray:
        return np.sqrt(((self.axes * self.semi[:, None]) ** 2).sum(axis=0))

    def r2(self, Z, Y, X, warp: Warp | None = None, sines=None) -> np.ndarray:
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
class Chain:
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

def lut(codes) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[list(codes)] = True
    return table


class Canvas:
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


def chain_sdf(canvas: Canvas, chain: Chain, warp: Warp | None):
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


def ellipsoid_box(canvas, ellipsoids, warp):
    pad = (warp.bound if warp is not None else 0.0) + 2 * max(canvas.step)
    lo = np.min([e.center - e.half_extent() for e in ellipsoids], axis=0) - pad
    hi = np.max([e.center + e.half_extent() for e in ellipsoids], axis=0) + pad
    return canvas.box(lo, hi)
