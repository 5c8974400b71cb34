"""Scoring and explaining archives of image files on one process or many (Lightning DDP), resumably.

See :func:`score` and ``docs/how-to/scoring-at-scale.md``.
"""

from .engine import ExplainSettings, ScoringJob, ScoringResult, score
from .tables import read_table, table_format, write_table

__all__ = ["ExplainSettings", "ScoringJob", "ScoringResult", "read_table", "score", "table_format", "write_table"]
