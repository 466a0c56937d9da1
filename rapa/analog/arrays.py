"""T analog arrays holding a module's kernel matrices (T = 1 without tiling), one per replica.

The module (rapa.nn.TiledConv2d, rapa.nn.Linear) keeps its weight as an ordinary Parameter (so
.caffemodel files hold it as before); AnalogArrays holds what the hardware adds: each array's
device-to-device draws (step sizes and bounds, saved with the model as state blobs) and the
(x, d) rows of the backward passes since the last update, which the optimizer's step turns into
the pulsed update of that weight (apply_update) in place of SGD, as aihwkit's AnalogSGD asks
each analog tile to update. Forward and backward products go through the array's periphery
(rapa.analog_mvm); biases stay digital.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry import conv_out
from .config import RPUConfig
from .ops import (analog_conv_forward, analog_conv_input_grad, analog_mvm, draw_seed,
                  rpu_update)

STATE_NAMES = ("dw_up", "dw_down", "w_min", "w_max")


class ArrayProducts(torch.nn.Module):
    """What every kind of simulated array shares: T arrays of O x K weights (`shape`) whose
    products go through the periphery of `config.forward` / `config.backward`
    (rapa.analog_mvm), each array's digital output scale `out_scale` (T,), and the (x, d,
    tile) rows of the backward passes since the last update (`pending`), which the optimizer's
    step hands to apply_update. AnalogArrays (RPU devices) and rapa.analog.hic.HICArrays (PCM)
    are its kinds. A kind that learns from the weight gradient d x^T alone (records_gradient)
    may also find in `pending` that gradient already summed, (T, O, K): the exact convolution
    (analog_conv) hands it so."""

    records_gradient = False
    holds_pcm = False  # PCM devices programmed in training (pcm_terms), read by drift tests
    # Products and update run on the device with no number coming back to the host and no
    # shape that depends on the data (rapa.analog_mvm with a tile_capacity, rapa.rpu_update with
    # the rate as a tensor): a CUDA graph can hold a training step (rapa.cuda_graph).
    capturable = False

    def __init__(self, config, shape: tuple[int, int, int]):
        super().__init__()
        shape = tuple(shape)
        if len(shape) != 3 or not all(isinstance(n, int) and n >= 1 for n in shape):
            raise ValueError(f"arrays' shape must be (T, O, K) of counts >= 1, got {shape}")
        config.check(type(config).__name__)  # as a prototxt's rpu_param or hic_param is
        self.config = config
        self.shape = shape
        self.register_buffer("out_scale", torch.ones(shape[0]))
        self.pending: list[tuple[Tensor, Tensor, Tensor] | Tensor] = []
        # A convolution's passes record their input image in place of its patch rows (a
        # ConvInputs), which a data-parallel run exchanges: set by the solver there.
        self.keep_inputs = False

    def row_scales(self, tile: Tensor, dtype: torch.dtype) -> Tensor:
        """The output scale alpha of each row's array, (M, 1); a tile of -1 takes array 0's
        (its row is zero whatever the scale)."""
        return self.out_scale.to(dtype)[tile.clamp_min(0)].unsqueeze(1)

    def matmul(self, rows: Tensor, weight3: Tensor, tile: Tensor, image=None,
               tile_capacity: Optional[int] = None) -> Tensor:
        """Row m of `rows` (M, K) through array tile[m]: (M, O), times that array's output
        scale. Differentiable in `rows`; the backward pass records the rows for the arrays'
        update instead of a weight gradient (given `image`, (input, kernel, padding, stride)
        whose patches the rows are, a ConvInputs with that image in place of the rows).
        tile_capacity: the most rows one array gets, where known (rapa.analog_mvm's)."""
        # Always the scales, 1 without weight scaling: a loaded model's scales apply even where
        # this net's configuration has none (they are the model's), and x * 1 is exact.
        return (_AnalogProduct.apply(rows, weight3, tile, self, image, tile_capacity)
                * self.row_scales(tile, rows.dtype))

    def exchanged(self) -> list:
        """The recorded passes as the processes of a data-parallel run exchange them (the
        pulsed update needs every row): as recorded, (x, d, tile) rows or a convolution's
        ConvInputs, the input image in place of its patches (about kh kw times fewer
        numbers), from which every process makes the rows again (ConvInputs.rows)."""
        return self.pending

    def exact(self) -> bool:
        """Both directions' products are exact (is_perfect)."""
        return self.config.forward.is_perfect and self.config.backward.is_perfect


class AnalogArrays(ArrayProducts):
    """T arrays of O x K weights (`shape`). With device.devices_per_weight n > 1 every weight
    is the mean of n devices (Gokmen, Onen, Haensch 2017; aihwkit's VectorUnitCell): device i
    of array t is array i T + t of the draws and of `device_weights` (n T, O, K), and the
    module's weight holds their mean."""

    capturable = True

    def __init__(self, config: RPUConfig, shape: tuple[int, int, int]):
        super().__init__(config, shape)
        dev = config.device
        self.devices = dev.devices_per_weight
        full = (self.devices * shape[0], *shape[1:])
        gauss = lambda: torch.randn(full)  # noqa: E731  (torch's generator: seeded runs repeat)
        # aihwkit 1.1.0's PulsedRPUDevice::populate (see ConstantStepDevice).
        gain = 1 + dev.dw_min_dtod * gauss()
        r = dev.up_down_dtod * gauss()
        w_max = dev.w_max * (1 + dev.w_max_dtod * gauss())
        w_min = dev.w_min * (1 + dev.w_min_dtod * gauss())
        dw_up = dev.dw_min * (gain + r + min(dev.up_down, 0.0))
        dw_down = dev.dw_min * (gain - r - max(dev.up_down, 0.0))
        if dev.enforce_consistency:
            dw_up, dw_down = dw_up.abs(), dw_down.abs()
            w_max, w_min = torch.maximum(w_max, w_min).abs(), -torch.minimum(w_max, w_min).abs()
        else:  # a device whose bounds cross is stuck at their midpoint
            middle = (w_max + w_min) / 2
            crossed = w_min > w_max
            w_max, w_min = torch.where(crossed, middle, w_max), torch.where(crossed, middle, w_min)
        self.register_buffer("dw_up", dw_up)
        self.register_buffer("dw_down", dw_down)
        self.register_buffer("w_min", w_min)
        self.register_buffer("w_max", w_max)
        # out_scale (ArrayProducts): alpha of each array with weight scaling, else 1.
        if self.devices > 1:
            # Each device's conductance, and the count of updates (single_sequential's turn).
            self.register_buffer("device_weights", torch.zeros(full))
            self.register_buffer("updates", torch.zeros(1, dtype=torch.long))

    def state_names(self) -> tuple[str, ...]:
        return STATE_NAMES + ("out_scale",) + (("device_weights", "updates")
                                               if self.devices > 1 else ())

    def state_blobs(self) -> list[Tensor]:
        """What a .caffemodel keeps besides the weights: the device draws, the scales (and,
        with several devices per weight, each device's conductance and the update count)."""
        return [getattr(self, n) for n in self.state_names()]

    def state_problem(self, index: int, value: Tensor) -> Optional[str]:
        """Why `value` cannot be state blob `index` (dw_up, dw_down, w_min, w_max, out_scale,
        then device_weights, updates) from a model file, or None: all finite, scales > 0,
        update count >= 0, and with enforce_consistency steps >= 0 and w_min <= 0 <= w_max
        (ConstantStepDevice)."""
        name = self.state_names()[index]
        if not torch.isfinite(value).all():
            return f"{name} must be finite"
        if name == "out_scale" and (value <= 0).any():
            return "out_scale (the arrays' digital scales) must be > 0"
        if name == "updates" and (value < 0).any():
            return "updates (the count of updates) must be >= 0"
        if self.config.device.enforce_consistency:
            wrong = {"dw_up": value < 0, "dw_down": value < 0, "w_min": value > 0,
                     "w_max": value < 0}.get(name)
            if wrong is not None and wrong.any():
                return (f"{name} must be {'<=' if name == 'w_min' else '>='} 0 "
                        f"(device enforce_consistency)")
        return None

    def device_state(self) -> dict[str, Tensor]:
        """The per-device draws, by the names rapa.analog.rpu_update takes."""
        return {n: getattr(self, n) for n in STATE_NAMES}

    @torch.no_grad()
    def map_(self, weight3: Tensor) -> int:
        """Write weights given in the layer's units (the fillers' at set-up, a digital model's
        when loaded) onto the arrays, in place: with weight scaling each array's scale becomes
        alpha_t = max(max |W_t|, weight_range) / omega and its conductances W_t / alpha_t
        (MappingParameters); then every conductance is clipped to its device's bounds.
        Returns how many were clipped. With several devices per weight every device is
        written with the weight (then clipped to its own bounds) and the weight becomes
        their mean."""
        mapping = self.config.mapping
        if mapping.weight_scaling_omega > 0:
            amax = weight3.abs().amax(dim=(1, 2)).clamp_min(mapping.weight_range)
            alpha = torch.where(amax > 0, amax / mapping.weight_scaling_omega,
                                torch.ones_like(amax))
            weight3.div_(alpha.view(-1, 1, 1).to(weight3.dtype))
            self.out_scale.copy_(alpha)
        if self.devices > 1:
            self.device_weights.copy_(weight3.repeat(self.devices, 1, 1))
        return self.clip_(weight3)

    def after_load(self, weight3: Tensor, digital: bool) -> list[str]:
        """After a model is loaded into weight3 (this array's view of the weight): digital
        weights are mapped as the fillers' are, an analog model's conductances clipped to
        their devices' bounds. Returns what the user should be told."""
        notes = []
        nominal = self.config.device.dw_min
        step = None if digital else float((self.dw_up.mean() + self.dw_down.mean()) / 2)
        if step is not None and not 0.5 <= step / nominal <= 2:  # another preset's devices
            notes.append(f"the model's devices step by {step:.3g} on average, this net's "
                         f"rpu_param says dw_min {nominal:g}: the model's devices are used, "
                         f"with dw_min {nominal:g} for the bit length")
        clipped = self.map_(weight3) if digital else self.clip_(weight3)
        if clipped:
            what = "digital weights" if digital else "conductances"
            notes.append(f"{clipped} of {weight3.numel()} {what} lie beyond their devices' "
                         f"bounds and were clipped (rpu_param: device w_min/w_max, mapping)")
        return notes

    @torch.no_grad()
    def clip_(self, weight3: Tensor) -> int:
        """Conductances saturate at their devices' bounds; returns how many did. With several
        devices per weight the devices' conductances are clipped and the weight becomes their
        mean."""
        held = self.device_weights if self.devices > 1 else weight3
        clipped = torch.minimum(torch.maximum(held, self.w_min), self.w_max)
        count = int((clipped != held).sum())
        held.copy_(clipped)
        if self.devices > 1:
            self._hold_mean(weight3)
        return count

    def _hold_mean(self, weight3: Tensor) -> None:
        weight3.copy_(self.device_weights.view(self.devices, *self.shape).mean(0))

    @torch.no_grad()
    def apply_update(self, weight: Tensor, lr: Union[float, Tensor],
                     generator: Optional[torch.Generator] = None) -> int:
        """The pulsed update of `weight` (the T x O x K conductances, in any shape of that
        size: a view is updated in place) from every recorded backward pass, in order; returns
        their count. `lr`: a number or a tensor of one on the weight's device, which the
        kernels read there (nothing comes back to the host: a CUDA graph can hold the update,
        with the rate of each replay). With weight scaling, array t runs at the rate lr /
        alpha_t^2: the recorded
        d is alpha_t times the layer's output gradient, so the layer's weights, alpha_t times
        the conductances, move by -lr d x^T on average, as in SGD. Each pass's pulses draw from
        a seed taken from `generator` (torch's default generator of the weight's device when
        None): the solver's own, which every process of a data-parallel run shares."""
        weight3 = weight.view(self.shape)
        done = len(self.pending)
        state = self.device_state()
        n, arrays = self.devices, self.shape[0]
        held = self.device_weights if n > 1 else weight3
        for entry in self.pending:
            x, d, tile = entry.rows() if isinstance(entry, ConvInputs) else entry
            d = d / self.row_scales(tile, d.dtype).square()
            if n > 1:
                # Device i of array t is array i T + t; a dropped patch (-1) stays dropped.
                policy = self.config.device.update_policy
                if policy == "all":
                    chosen = torch.arange(n, device=tile.device)
                elif policy == "single_random":
                    chosen = torch.randint(n, (1,), generator=generator, device=tile.device)
                else:  # single_sequential
                    chosen = self.updates % n
                    self.updates += 1
                tile = torch.where(tile >= 0, tile + arrays * chosen.view(-1, 1),
                                   tile).reshape(-1)
                x, d = x.repeat(len(chosen), 1), d.repeat(len(chosen), 1)
            rpu_update(held, x, d, tile, lr, state, self.config.device, self.config.update,
                       seed=draw_seed(weight.device, generator))
        if n > 1:
            self._hold_mean(weight3)
        self.pending.clear()
        return done


class ConvInputs(tuple):
    """(image, d, tile) of a convolution's pass recorded with its input image (N, C, H, W) in
    place of the patch rows, and `geometry` (kernel, padding, stride): rows() makes the pass's
    (x, d, tile) from it (in a data-parallel run, from everybody's images)."""

    def __new__(cls, image, d, tile, geometry):
        entry = super().__new__(cls, (image, d, tile))
        entry.geometry = geometry
        return entry

    def rows(self) -> tuple[Tensor, Tensor, Tensor]:
        image, d, tile = self
        return patch_rows(image, *self.geometry), d, tile


class _AnalogProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, weight3, tile, arrays, image, tile_capacity):
        ctx.save_for_backward(rows, weight3, tile)
        ctx.arrays, ctx.image, ctx.tile_capacity = arrays, image, tile_capacity
        return analog_mvm(rows, weight3.detach(), tile, arrays.config.forward,
                          tile_capacity=tile_capacity)

    @staticmethod
    def backward(ctx, grad):
        rows, weight3, tile = ctx.saved_tensors
        grad = grad.contiguous()
        grad_rows = None
        if ctx.needs_input_grad[0]:
            grad_rows = analog_mvm(grad, weight3.detach(), tile, ctx.arrays.config.backward,
                                   transposed=True, tile_capacity=ctx.tile_capacity)
        if ctx.needs_input_grad[1]:
            ctx.arrays.pending.append((rows, grad, tile) if ctx.image is None else
                                      ConvInputs(ctx.image[0], grad, tile, ctx.image[1:]))
        ctx.image = None  # the graph outlives the step: let the pending entry hold it alone
        return grad_rows, None, None, None, None, None


def patch_rows(x: Tensor, kernel, padding, stride) -> Tensor:
    """im2col of x (N, C, H, W): one row per patch, (N * Ho * Wo, C * kh * kw), without
    autograd (see _PatchRows)."""
    with torch.no_grad():
        return _PatchRows.apply(x, tuple(kernel), tuple(padding), tuple(stride))


class _PatchRows(torch.autograd.Function):
    """im2col straight into one row per patch: (N*Ho*Wo, C*kh*kw), K in F.unfold's (c, ky, kx)
    order, written by one strided copy (F.unfold's (N, K, L) would need a transposing copy
    after it: twice the time). The backward is F.fold of the rows' gradient."""

    @staticmethod
    def forward(ctx, x, kernel, padding, stride):
        ctx.geometry = (x.shape, kernel, padding, stride)
        n, c = x.shape[:2]
        padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
        patches = padded.unfold(2, kernel[0], stride[0]).unfold(3, kernel[1], stride[1])
        ho, wo = patches.shape[2:4]
        rows = x.new_empty((n * ho * wo, c * kernel[0] * kernel[1]))
        rows.view(n, ho, wo, c, *kernel).copy_(patches.permute(0, 2, 3, 1, 4, 5))
        return rows

    @staticmethod
    def backward(ctx, grad):
        shape, kernel, padding, stride = ctx.geometry
        n = shape[0]
        cols = grad.reshape(n, -1, grad.shape[1]).transpose(1, 2)
        return (F.fold(cols, shape[2:], kernel, padding=padding, stride=stride),
                None, None, None)


@contextlib.contextmanager
def _full_float32():
    """cuDNN without TF32 (its default on Ampere and later): exact products in float32."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


class _ExactConv(torch.autograd.Function):
    """One array's exact products over every patch: the dense convolution (its sums in
    another order than one product per patch: equal to float rounding). The backward pass
    records the weight gradient d x^T, summed over the patches by the convolution's own
    weight-gradient kernel, for arrays that learn from it (records_gradient)."""

    @staticmethod
    def forward(ctx, x, weight4, arrays, stride, padding):
        ctx.save_for_backward(x, weight4)
        ctx.arrays, ctx.geometry = arrays, (stride, padding)
        with _full_float32():
            return F.conv2d(x, weight4.detach(), None, stride, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight4 = ctx.saved_tensors
        stride, padding = ctx.geometry
        with _full_float32():
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad, x, weight4.detach(), None, stride, padding, (1, 1), False, (0, 0), 1,
                (ctx.needs_input_grad[0], ctx.needs_input_grad[1], False))
        if ctx.needs_input_grad[1]:
            # reshape: a channels-last input gives a channels-last gradient
            ctx.arrays.pending.append(grad_w.reshape(ctx.arrays.shape))
        return grad_x, None, None, None, None


class _FusedAnalogConv(torch.autograd.Function):
    """The convolution's array products without the patch rows (rapa.analog_conv_forward and
    its input gradient, CPU), each array's output scale and the bias applied in the same pass:
    the same draws and numbers as _AnalogProduct over _PatchRows' rows, to the products'
    rounding. The backward pass records for the update what the arrays learn from: the weight
    gradient d x^T summed per array (records_gradient, by the digital convolution's own
    kernels), else the input image with the rows' d (ConvInputs); d = alpha_t dL/dout."""

    @staticmethod
    def forward(ctx, x, weight3, bias, assignment, arrays, kernel, stride, padding, untiled):
        weight5 = weight3.detach().view(*weight3.shape[:2], x.shape[1], *kernel)
        scale = arrays.out_scale.to(x.dtype)
        ctx.save_for_backward(x, weight5, assignment, scale)
        ctx.arrays, ctx.geometry, ctx.untiled = arrays, (kernel, stride, padding), untiled
        # The image the pulsed update will make its rows from, copied now: a later layer (or a
        # buffer refilled for the next step) may change the input in place before the update.
        ctx.image = (x.detach().clone(memory_format=torch.contiguous_format)
                     if ctx.needs_input_grad[1] and not arrays.records_gradient else None)
        b = None if bias is None else bias.detach().view(weight3.shape[0], -1)
        ctx.bias_shape = None if bias is None else bias.shape
        return analog_conv_forward(x, weight5, b, assignment, scale, stride, padding,
                                   arrays.config.forward)

    @staticmethod
    def backward(ctx, grad):
        x, weight5, assignment, scale = ctx.saved_tensors
        kernel, stride, padding = ctx.geometry
        arrays = ctx.arrays
        grad = grad.contiguous(memory_format=torch.channels_last)  # the kernels' rows
        rows = grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1])  # a view: (N Ho Wo, O)
        flat = assignment.reshape(-1)
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = analog_conv_input_grad(grad, x, weight5, assignment, scale, stride, padding,
                                            arrays.config.backward)
        if ctx.needs_input_grad[2]:
            if ctx.untiled:
                grad_bias = rows.sum(0)
            else:  # per array; dropped patches (-1) have no bias
                kept = (flat >= 0).to(rows.dtype).unsqueeze(1)
                grad_bias = rows.new_zeros((weight5.shape[0], rows.shape[1]))
                grad_bias.index_add_(0, flat.clamp_min(0), rows * kept)
            grad_bias = grad_bias.reshape(ctx.bias_shape)
        if ctx.needs_input_grad[1]:
            if arrays.records_gradient:
                with _full_float32():
                    if ctx.untiled:  # the dense convolution's weight gradient, times alpha
                        # The image in the gradient's layout (channels last): oneDNN would
                        # otherwise transpose the larger gradient (5x slower for conv1).
                        grad_w = torch.ops.aten.convolution_backward(
                            grad, x.contiguous(memory_format=torch.channels_last), weight5[0],
                            None, stride, padding, (1, 1), False, (0, 0), 1,
                            (False, True, False))[1].unsqueeze(0)
                    else:
                        grad_w = torch.ops.rapa.tiled_conv_backward(
                            grad, x, weight5, assignment, list(stride), list(padding), None,
                            [False, True, False])[1]
                arrays.pending.append(grad_w.reshape(arrays.shape) * scale.view(-1, 1, 1))
            else:
                d = rows * scale[flat.clamp_min(0)].unsqueeze(1)
                arrays.pending.append(ConvInputs(ctx.image, d, flat, (kernel, padding, stride)))
        ctx.image = None  # the graph outlives the step: let the pending entry hold it alone
        return grad_x, None, grad_bias, None, None, None, None, None, None


def analog_conv(x: Tensor, weight3: Tensor, bias, tile, kernel, stride, padding,
                arrays: AnalogArrays, tile_capacity: Optional[int] = None) -> Tensor:
    """A convolution on analog arrays: one array product per patch (im2col), patch (n, y, x) on
    array tile[n, y, x] (None: all on array 0; -1: dropped, output 0 without bias). weight3 is
    (T, O, K) with K in F.unfold's (c, ky, kx) order; bias (T, O), (O,) or None;
    tile_capacity: the most patches one array gets, where the tiling knows it. One array
    with exact products, for arrays that learn from the weight gradient alone (HIC), is the
    dense convolution (_ExactConv): the same numbers, at the digital convolution's speed."""
    h, w = x.shape[2:]
    if tile is None and arrays.records_gradient and arrays.exact():
        weight4 = weight3.view(weight3.shape[1], x.shape[1], *kernel)
        out = _ExactConv.apply(x, weight4, arrays, tuple(stride), tuple(padding))
        out = out * arrays.out_scale[0].to(out.dtype)
        return out if bias is None else out + bias.view(weight3.shape[0], -1)[0].view(1, -1, 1, 1)
    ho, wo = conv_out(h, kernel[0], stride[0], padding[0]), conv_out(w, kernel[1], stride[1],
                                                                  padding[1])
    if x.device.type == "cpu":
        return _fused_analog_conv(x, weight3, bias, tile, (ho, wo), kernel, stride, padding,
                                  arrays)
    return _rows_analog_conv(x, weight3, bias, tile, (ho, wo), kernel, stride, padding, arrays,
                             tile_capacity)


def _rows_analog_conv(x, weight3, bias, tile, out_hw, kernel, stride, padding, arrays,
                      tile_capacity):
    """analog_conv off the CPU: the patch rows (_PatchRows) through the arrays' matmul
    (rapa.analog_mvm, laid out for tile_capacity rows per array: the untiled ones hold
    every row), output (N, O, Ho, Wo) channels last. Runs on any device (the tests compare it
    with the CPU's fused kernels)."""
    rows = _PatchRows.apply(x, tuple(kernel), tuple(padding), tuple(stride))  # (N*L, K)
    flat = (tile.reshape(-1) if tile is not None
            else torch.zeros(rows.shape[0], dtype=torch.long, device=x.device))
    # A copy (a later layer may change the input in place before the exchange reads it), in
    # the layout the exchange sends; only where a backward pass will record the rows.
    keep = arrays.keep_inputs and torch.is_grad_enabled() and weight3.requires_grad
    image = ((x.detach().clone(memory_format=torch.contiguous_format), tuple(kernel),
              tuple(padding), tuple(stride)) if keep else None)
    capacity = rows.shape[0] if tile is None else tile_capacity
    out = arrays.matmul(rows, weight3, flat, image, capacity)          # (N*L, O)
    if bias is not None:
        b = bias.view(weight3.shape[0], -1)
        if tile is None:
            out = out + b[0]
        else:
            # index_select: its backward adds rows (index_add_), where indexing's sorts them.
            kept = (flat >= 0).unsqueeze(1).to(out.dtype)
            out = out + b.index_select(0, flat.clamp_min(0)) * kept
    # The rows are already (n, y, x, o): a channels-last view, no copy (the layers after it
    # take either layout).
    return out.view(x.shape[0], *out_hw, -1).permute(0, 3, 1, 2)


def _fused_analog_conv(x, weight3, bias, tile, out_hw, kernel, stride, padding, arrays):
    """analog_conv on the CPU: the fused kernels (_FusedAnalogConv), output (N, O, Ho, Wo)
    channels last."""
    if x.dim() != 4 or x.shape[1] * kernel[0] * kernel[1] != weight3.shape[2]:
        raise ValueError(f"rapa: analog convolution: input {tuple(x.shape)} must be (N, C, H, W) "
                         f"with C = {weight3.shape[2] // (kernel[0] * kernel[1])} channels")
    assignment = (tile if tile is not None
                  else torch.zeros((x.shape[0], *out_hw), dtype=torch.long, device=x.device))
    return _FusedAnalogConv.apply(x, weight3, bias, assignment, arrays, tuple(kernel),
                                  tuple(stride), tuple(padding), tile is None)
