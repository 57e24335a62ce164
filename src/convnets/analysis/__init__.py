"""Layer tables, parameter and MAC counting, and the case studies' cost formulas.

- :func:`count`: params and MACs of any model, counted on a meta copy (the model is untouched).
- :func:`summary`: the layer table (output shape, params, MACs per layer) and per-stage pattern.
- :mod:`convnets.analysis.cost`: the worked cost examples (conv output size, 1x1 bottleneck,
  depthwise-separable) for any numbers, each checked by counting real layers.
"""

from convnets.analysis.counting import COUNTING_RULE, Counts, LayerCount, count
from convnets.analysis.table import StageRow, Summary, SummaryRow, summary

__all__ = ["COUNTING_RULE", "Counts", "LayerCount", "StageRow", "Summary", "SummaryRow", "count", "summary"]
