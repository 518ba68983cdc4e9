"""Keras layers, one concept per module."""

from tfrec_proxy.layers.encoders import SelfAttentionEncoder, TransformerBlock
from tfrec_proxy.layers.extraction import SequenceExtraction
from tfrec_proxy.layers.parametric_attention import MultiInterestScorer, ParametricAttention
from tfrec_proxy.layers.pir import ProxyItemEncoder
from tfrec_proxy.layers.proxysr import ProxyDistanceScorer, ProxySessionEncoder
from tfrec_proxy.layers.ram import RAMEncoder, UserEmbedding
from tfrec_proxy.layers.sasrec import ItemEmbedding, SASRecEncoder
from tfrec_proxy.layers.towers import ItemTower, QueryTower

__all__ = ["ItemEmbedding", "ItemTower", "MultiInterestScorer", "ParametricAttention",
           "ProxyDistanceScorer", "ProxyItemEncoder", "ProxySessionEncoder", "QueryTower",
           "RAMEncoder", "SASRecEncoder", "SelfAttentionEncoder", "SequenceExtraction",
           "TransformerBlock", "UserEmbedding"]
