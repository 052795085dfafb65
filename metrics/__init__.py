"""Evaluation metrics. Caption metrics: ``metrics.caption`` (COCO toolkit, design §6)."""
from metrics.caption import METRIC_KEYS, CaptionScorer, sanitize_caption

__all__ = ["METRIC_KEYS", "CaptionScorer", "sanitize_caption"]
