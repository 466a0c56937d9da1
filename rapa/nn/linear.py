"""Linear: a fully connected layer (Caffe's InnerProduct), on digital or simulated analog arrays."""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..analog import HICConfig, RPUConfig, make_arrays
from ..geometry import count

Filler = Callable[[Tensor], None]


class Linear(torch.nn.Module):
    """y = x W^T + b over the last dimension: input (..., in_features) -> (..., out_features).

    weight (out_features, in_features), or (in_features, out_features) with `transpose`
    (Caffe's InnerProduct transpose); bias (out_features,) or None. `rpu_config` puts the
    weight on one simulated analog array (rapa.analog; Gokmen & Vlasov 2016): products through
    the array's periphery, no weight gradient, and the pulsed update applied by the optimizer's
    step (rapa.sgd.SGD); the bias stays digital; not with `transpose`. A HICConfig puts it on
    hybrid binary + multi-level PCM arrays (rapa.analog.hic) instead.
    `weight_filler(weight)` and `bias_filler(bias)` fill in place (default: torch.nn.Linear's
    initialisation). Bad arguments raise ValueError naming them.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 transpose: bool = False,
                 rpu_config: Optional[Union[RPUConfig, HICConfig]] = None,
                 weight_filler: Optional[Filler] = None, bias_filler: Optional[Filler] = None):
        super().__init__()
        in_features, out_features = count(in_features, "in_features"), count(out_features,
                                                                            "out_features")
        if rpu_config is not None and transpose:
            raise ValueError("rapa: an analog InnerProduct stores (O, K): transpose must be "
                             "false")
        self.in_features, self.out_features, self.transpose = in_features, out_features, transpose
        shape = (in_features, out_features) if transpose else (out_features, in_features)
        self.weight = torch.nn.Parameter(torch.empty(shape))
        self.bias = torch.nn.Parameter(torch.empty(out_features)) if bias else None
        with torch.no_grad():
            if weight_filler is not None:
                weight_filler(self.weight)
            else:
                torch.nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            if self.bias is not None:
                if bias_filler is not None:
                    bias_filler(self.bias)
                else:
                    bound = 1.0 / math.sqrt(in_features)
                    torch.nn.init.uniform_(self.bias, -bound, bound)
        self.arrays = None
        if rpu_config is not None:
            self.arrays = make_arrays(rpu_config, (1, out_features, in_features))
            self.arrays.map_(self.weight.view(1, out_features, in_features))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output shape for an input of `input_shape`, without running."""
        if not input_shape or input_shape[-1] != self.in_features:
            raise ValueError(f"rapa: the input's last dimension must be {self.in_features}, "
                             f"got shape {input_shape}")
        return (*input_shape[:-1], self.out_features)

    def state_blobs(self) -> list[Tensor]:
        """The arrays' device draws and scales, which a model file keeps (none if digital)."""
        return self.arrays.state_blobs() if self.arrays is not None else []

    def state_blob_problem(self, index: int, value: Tensor) -> Optional[str]:
        """Why `value` cannot be the arrays' state blob `index`, or None."""
        return self.arrays.state_problem(index, value) if self.arrays is not None else None

    def forward(self, x: Tensor) -> Tensor:
        if self.arrays is None:
            return F.linear(x, self.weight.t() if self.transpose else self.weight, self.bias)
        lead = x.shape[:-1]
        rows = x.reshape(-1, x.shape[-1])
        tile = torch.zeros(rows.shape[0], dtype=torch.long, device=x.device)
        out = self.arrays.matmul(rows, self.weight.view(1, *self.weight.shape), tile,
                                 tile_capacity=rows.shape[0])
        if self.bias is not None:
            out = out + self.bias
        return out.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}" + (", analog" if self.arrays is not None else ""))
