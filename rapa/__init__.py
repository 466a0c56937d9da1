"""rapa: RAPA-ConvNets (Rasch, Gokmen, Rigotti, Haensch, Front. Neurosci. 2019) operators.

`import rapa` loads the compiled operators into torch.ops.rapa and registers their fake kernels
and autograd. The typed wrappers below accept ints where the ops take pairs; `rapa.nn` holds the
modules that compute every layer (tiled and analog convolutions, pooling, ...), `rapa.tiling`
the tiling schemes.
"""
from . import _library
from .ops import max_pool, mixed_pool, random_assign, stochastic_pool, tiled_conv
from . import nn, tiling

__all__ = ["tiled_conv", "random_assign", "mixed_pool", "stochastic_pool", "max_pool", "nn",
           "tiling"]
__version__ = "0.1.0"
