"""Keras layers, one concept per module."""

from tfrec_proxy.layers.encoders import SelfAttentionEncoder, TransformerBlock
from tfrec_proxy.layers.extraction import SequenceExtraction
from tfrec_proxy.layers.parametric_attention import MultiInterestScorer, ParametricAttention
from tfrec_proxy.layers.towers import ItemTower, QueryTower

__all__ = ["ItemTower", "MultiInterestScorer", "ParametricAttention", "QueryTower",
           "SelfAttentionEncoder", "SequenceExtraction", "TransformerBlock"]
