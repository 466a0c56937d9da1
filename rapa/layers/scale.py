"""Scale: Caffe's elementwise scale of bottom[0] over axes [axis, axis + num_axes), by a
learned blob (one bottom) or by bottom[1] (two bottoms), plus an optional learned bias, as one
rapa.nn.Scale. Blobs in Caffe's order: the scale (one bottom only), then the bias."""
from __future__ import annotations

from ..fillers import fill
from ..nn import Scale as ScaleModule
from ..proto import pb
from .base import Layer, register


@register("Scale")
class Scale(Layer):
    bottoms = (1, 2)

    def __init__(self, param, bottom_shapes, phase, context=None):
        super().__init__(param, bottom_shapes, phase, context)
        sp = param.scale_param
        shape = self.bottom_shapes[0]
        axis = self.axis_of(sp.axis, shape, "scale_param.axis") if shape else 0
        where = f"layer '{self.layer_name}'"
        bias_filler = sp.bias_filler if sp.HasField("bias_filler") else pb.FillerParameter()
        self.given = len(self.bottom_shapes) == 2
        if self.given:
            scale_shape = self.bottom_shapes[1]
            self.module = self.build(
                ScaleModule, None, axis if scale_shape else 0, sp.bias_term, scale_shape,
                bias_filler=lambda b: fill(b, bias_filler, f"{where} bias_filler"))
            self.build(self.module.output_shape, shape, scale_shape)
            return
        if sp.num_axes < -1:
            raise self.error(f"scale_param.num_axes must be >= -1, got {sp.num_axes}")
        end = len(shape) if sp.num_axes == -1 else axis + sp.num_axes
        if end > len(shape):
            raise self.error(f"a scale over {sp.num_axes} axes from axis {axis} extends past "
                             f"the bottom's shape {shape}")
        filler = sp.filler if sp.HasField("filler") else pb.FillerParameter(type="constant",
                                                                              value=1)
        self.module = self.build(
            ScaleModule, shape[axis:end], axis, sp.bias_term,
            scale_filler=lambda w: fill(w, filler, f"{where} scale_param.filler"),
            bias_filler=lambda b: fill(b, bias_filler, f"{where} bias_filler"))

    def top_shapes(self):
        return [self.bottom_shapes[0]]

    def channel_affine(self):
        m = self.module
        if self.given or m.axis != 1 or m.weight.dim() != 1 or len(self.bottom_shapes[0]) < 2:
            return None
        return lambda: (m.weight, m.bias)  # read at every call: a test net ties them later

    def learnable_blobs(self):
        m = self.module
        return [b for b in (m.weight, m.bias) if b is not None]
