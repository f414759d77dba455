"""Shared vocabulary of every layer: `Geometry` (shape, spacing, origin, direction of a scan), the
FLARE label table (`labels`), the foreground bounding box (`boxes`) and the option choices (devices,
precisions, resampling, export methods). Imports nothing from the rest of `inference`.
"""
