"""Explanations: the CAM family (shared forward + truncated backward), Score-CAM, occlusion,
overlays, and measures of explanation quality."""

from .cam import METHODS, Explanation, explain, explain_many
from .overlay import heatmap_overlay, hotspot_overlay, normalize_p99

__all__ = [
    "METHODS", "Explanation", "explain", "explain_many", "heatmap_overlay", "hotspot_overlay", "normalize_p99",
]
