"""Evaluation metrics. Caption metrics: ``metrics.caption`` (COCO toolkit); its Java processes: ``metrics.java``."""
from metrics.caption import METRIC_KEYS, CaptionScorer, ScoringError, sanitize_caption

__all__ = ["METRIC_KEYS", "CaptionScorer", "ScoringError", "sanitize_caption"]
