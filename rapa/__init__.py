"""rapa: RAPA-ConvNets (Rasch, Gokmen, Rigotti, Haensch, Front. Neurosci. 2019) operators.

`import rapa` loads the compiled operators into torch.ops.rapa and registers their fake kernels
and autograd. The typed wrappers below accept ints where the ops take pairs.
"""
from . import _library
from .ops import max_pool, mixed_pool, random_assign, stochastic_pool, tiled_conv
from . import tiling
from .nn import MixedPool2d, StochasticPool2d, TiledConv2d

__all__ = ["tiled_conv", "random_assign", "mixed_pool", "stochastic_pool", "max_pool", "tiling",
           "TiledConv2d", "MixedPool2d", "StochasticPool2d"]
__version__ = "0.1.0"
