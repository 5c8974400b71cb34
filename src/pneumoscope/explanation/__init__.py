"""Explanations: the CAM core (hook, truncated backward, on-device maths) and overlays."""

from .cam import METHODS, Explanation, explain
from .overlay import heatmap_overlay, hotspot_overlay, normalize_p99

__all__ = ["METHODS", "Explanation", "explain", "heatmap_overlay", "hotspot_overlay", "normalize_p99"]
