from .activations import HSigmoid, HSwish, create_act
from .conv import ConvBNAct, make_divisible, reduced_width, require, require_divisible
from .norm import GroupNormDeploy
from .pooling import AxisMax, AxisMean, adaptive_pool_dims

__all__ = ["HSigmoid", "HSwish", "create_act", "ConvBNAct", "make_divisible", "reduced_width", "require",
           "require_divisible", "GroupNormDeploy", "AxisMax", "AxisMean", "adaptive_pool_dims"]
