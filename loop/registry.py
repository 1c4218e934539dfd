"""The registered techniques, in the order their hooks apply: the one list a new technique joins.

A start (SDEdit or the source's inversion) first, copying before the differences that build on the
copied anchor, blending after; then the techniques that plan the model's calls (at most one per
run), DeepCache (which plans how each step's frames are evaluated), flow fusion last, on the final clean
estimates. The interface each class has is described in loop/techniques.py.
"""
from loop.deep_cache import DeepCache
from loop.flow_fusion import FlowFusion
from loop.planners import CrossFrameAttention, FeatureBank, Grid, TokenMerge, TrajectoryAttention
from loop.techniques import Blend, Copy, LatentDifferences, StartFromInversion, StartFromLatents

TECHNIQUES = [StartFromLatents, StartFromInversion, Copy, LatentDifferences, Blend, CrossFrameAttention,
              TrajectoryAttention, Grid, FeatureBank, TokenMerge, DeepCache, FlowFusion]
