"""Scoring and explaining archives of image files (or a prepared store) on one process or many (Lightning DDP), resumably.

See :func:`score` and ``docs/how-to/scoring-at-scale.md``.
"""

from .dataset import StoreInputs
from .engine import ExplainSettings, ScoringJob, ScoringResult, score
from .tables import read_table, table_format, write_table

__all__ = ["ExplainSettings", "ScoringJob", "ScoringResult", "StoreInputs", "read_table", "score", "table_format", "write_table"]
