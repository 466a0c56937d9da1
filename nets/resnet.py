"""CIFAR residual nets (He, Zhang, Ren, Sun 2016, "Deep residual learning for image
recognition", section 4.2) as Caffe prototxt, optionally with RAPA tiling.

conv 3x3 (16 w) -> BatchNorm -> Scale -> ReLU -> 3 stages of n basic blocks (16 w, 32 w, 64 w
channels on 32x32, 16x16, 8x8; the first block of stages 2 and 3 has stride 2) -> global
average pooling -> InnerProduct (classes); depth = 6 n + 2 (20, 32, 56, ...), w the width
multiplier. A basic block: conv 3x3 -> BatchNorm -> Scale -> ReLU -> conv 3x3 -> BatchNorm ->
Scale, plus the shortcut (Eltwise SUM), then ReLU. Where the shape changes, the shortcut is
  A: identity with zero padding (He et al.'s CIFAR nets): every other pixel (a 1x1 stride-2
     convolution per channel with fixed weights 1) and as many channels of zeros (a Scale by
     a fixed 0), concatenated; no parameters learned;
  B: a 1x1 stride-2 convolution (projection) -> BatchNorm -> Scale.
Every 3x3 convolution may be tiled, with the tile count of its stage (e.g. 16, 4, 1).
Convolutions have no bias (BatchNorm follows) and msra fillers; BatchNorm's blobs lr_mult 0,
its moving_average_fraction 0.9, and the Scales' rates (1, 2 for the bias, which is not
decayed) as in public Caffe CIFAR ResNets.
Augmentation: 4-pixel padding, a random 32x32 crop and mirroring (He et al.); the mean image
is subtracted.
"""
from __future__ import annotations

from full import DATASETS, data_layers, pb

DEPTHS = (20, 32, 56)
WIDTHS = (1, 2, 4)
SHORTCUTS = ("A", "B")


def _conv(net, name, bottom, out, kernel, stride, tiling="none", tiles=1, hic=False):
    layer = net.layer.add(name=name, type="Convolution", bottom=[bottom], top=[name])
    layer.param.add(lr_mult=1, decay_mult=1)
    cp = layer.convolution_param
    cp.num_output, cp.bias_term = out, False
    cp.kernel_size[:], cp.stride[:], cp.pad[:] = [kernel], [stride], [kernel // 2]
    cp.weight_filler.type = "msra"
    if tiling != "none" and tiles > 1:
        cp.tiling_param.scheme, cp.tiling_param.num_tiles = tiling, tiles
    if hic:
        cp.hic_param.SetInParent()  # rapa.analog.hic's defaults
    return name


def _bn_scale(net, name, blob):
    bn = net.layer.add(name=f"{name}_bn", type="BatchNorm", bottom=[blob], top=[blob])
    for _ in range(3):
        bn.param.add(lr_mult=0, decay_mult=0)
    # Caffe's default 0.999 averages the statistics of ~1000 batches, from weights long gone
    # early in training; 0.9 is public Caffe ResNets' choice (and torch's momentum 0.1).
    bn.batch_norm_param.moving_average_fraction = 0.9
    scale = net.layer.add(name=f"{name}_scale", type="Scale", bottom=[blob], top=[blob])
    scale.param.add(lr_mult=1, decay_mult=1)
    scale.param.add(lr_mult=2, decay_mult=0)
    scale.scale_param.bias_term = True
    return blob


def _relu(net, name, blob):
    net.layer.add(name=name, type="ReLU", bottom=[blob], top=[blob])
    return blob


def _shortcut_a(net, name, bottom, channels):
    """Every other pixel of each channel, then as many channels of zeros."""
    sub = net.layer.add(name=f"{name}_sub", type="Convolution", bottom=[bottom],
                        top=[f"{name}_sub"])
    sub.param.add(lr_mult=0, decay_mult=0)
    cp = sub.convolution_param
    cp.num_output, cp.group, cp.bias_term = channels, channels, False
    cp.kernel_size[:], cp.stride[:] = [1], [2]
    cp.weight_filler.type, cp.weight_filler.value = "constant", 1
    zeros = net.layer.add(name=f"{name}_zeros", type="Scale", bottom=[f"{name}_sub"],
                          top=[f"{name}_zeros"])
    zeros.param.add(lr_mult=0, decay_mult=0)
    zeros.scale_param.filler.type, zeros.scale_param.filler.value = "constant", 0
    net.layer.add(name=f"{name}_pad", type="Concat", bottom=[f"{name}_sub", f"{name}_zeros"],
                  top=[f"{name}_pad"])
    return f"{name}_pad"


def resnet_net(depth: int = 32, width: int = 1, tiling: str = "none", tiles=(16, 4, 1),
               shortcut: str = "A", dataset: str = "cifar10", batch: int = 128,
               test_batch: int = 100, hic: bool = False) -> pb.NetParameter:
    """hic: every Convolution and the InnerProduct on hybrid binary + multi-level PCM arrays
    (rapa.analog.hic, its defaults: each array's range from its initial weights)."""
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"depth must be 6 n + 2 (20, 32, 56, ...), got {depth}")
    if shortcut not in SHORTCUTS:
        raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
    ds, n = DATASETS[dataset], (depth - 2) // 6
    name = (f"{dataset}_resnet{depth}" + (f"x{width}" if width != 1 else "") + f"_{tiling}"
            + ("_hic" if hic else ""))
    net = pb.NetParameter(name=name)
    data_layers(net, ds, batch, test_batch, crop_pad=(32, 4))
    x = _relu(net, "conv1_relu", _bn_scale(
        net, "conv1", _conv(net, "conv1", "data", 16 * width, 3, 1, tiling, tiles[0], hic)))
    channels = 16 * width
    for stage in range(3):
        out = 16 * width * 2 ** stage
        for block in range(n):
            b = f"stage{stage + 1}_block{block + 1}"
            stride = 2 if stage > 0 and block == 0 else 1
            y = _relu(net, f"{b}_conv1_relu", _bn_scale(
                net, f"{b}_conv1", _conv(net, f"{b}_conv1", x, out, 3, stride, tiling,
                                         tiles[stage], hic)))
            y = _bn_scale(net, f"{b}_conv2",
                          _conv(net, f"{b}_conv2", y, out, 3, 1, tiling, tiles[stage],
                                hic))
            if stride == 1 and out == channels:
                short = x
            elif shortcut == "A":
                short = _shortcut_a(net, f"{b}_short", x, channels)
            else:
                short = _bn_scale(net, f"{b}_proj", _conv(net, f"{b}_proj", x, out, 1, stride,
                                                                 hic=hic))
            net.layer.add(name=f"{b}_sum", type="Eltwise", bottom=[y, short],
                          top=[f"{b}_sum"]).eltwise_param.operation = pb.EltwiseParameter.SUM
            x = _relu(net, f"{b}_relu", f"{b}_sum")
            channels = out
    pool = net.layer.add(name="pool", type="Pooling", bottom=[x], top=["pool"])
    pool.pooling_param.pool, pool.pooling_param.global_pooling = pb.PoolingParameter.AVE, True
    ip = net.layer.add(name="fc", type="InnerProduct", bottom=["pool"], top=["fc"])
    ip.param.add(lr_mult=1, decay_mult=1)
    ip.param.add(lr_mult=2, decay_mult=0)
    ip.inner_product_param.num_output = ds.classes
    ip.inner_product_param.weight_filler.type = "msra"
    if hic:
        ip.inner_product_param.hic_param.SetInParent()
    acc = net.layer.add(name="accuracy", type="Accuracy", bottom=["fc", "label"],
                        top=["accuracy"])
    acc.include.add(phase=pb.TEST)
    net.layer.add(name="loss", type="SoftmaxWithLoss", bottom=["fc", "label"], top=["loss"])
    return net


def resnet_solver(net_path: str, prefix: str, dataset: str = "cifar10", batch: int = 128,
                  test_batch: int = 100, epochs: float = 164,
                  test_every_epochs: float = 1, analog: bool = False) -> pb.SolverParameter:
    """He et al.'s schedule: rate 0.1 at batch 128, divided by 10 at 50% and 75% of the
    iterations (32k and 48k of 64k, about 164 epochs), momentum 0.9, weight decay 1e-4.
    analog (nets on analog or HIC arrays, which update without momentum): no momentum, at the
    rate of momentum SGD's steady state, 0.1 / (1 - 0.9) = 1, for every blob."""
    ds = DATASETS[dataset]
    epoch = -(-ds.train_images // batch)
    sp = pb.SolverParameter(net=net_path)
    sp.test_iter.append(-(-ds.test_images // test_batch))
    sp.test_interval = max(1, int(test_every_epochs * epoch))
    rate, momentum = 0.1, 0.9
    if analog:  # in double precision: the fields are float32 (0.1 / (1 - 0.9f) = 0.99999976)
        rate, momentum = rate / (1 - momentum), 0.0
    sp.base_lr, sp.momentum, sp.weight_decay = rate, momentum, 1e-4
    sp.max_iter = int(round(epochs * epoch))
    sp.lr_policy, sp.gamma = "multistep", 0.1
    sp.stepvalue.extend([sp.max_iter // 2, sp.max_iter * 3 // 4])
    sp.display = max(20, epoch // 10)
    sp.average_loss = sp.display
    sp.snapshot = sp.test_interval
    # Before any batch, BatchNorm's accumulated statistics are empty (a test would give NaN,
    # in Caffe too): the first test comes after the first epoch.
    sp.test_initialization = False
    sp.snapshot_prefix = prefix
    sp.solver_mode = pb.SolverParameter.CPU
    sp.random_seed = 1
    return sp


def with_inputs(param: pb.NetParameter, batch: int) -> pb.NetParameter:
    """The net with its Data layers turned into Input layers of (batch, 3, 32, 32) images and
    (batch,) labels, for batches held in memory (benchmarks, tests) instead of the LMDB."""
    for layer in param.layer:
        if layer.type == "Data":
            layer.type = "Input"
            layer.ClearField("data_param")
            layer.ClearField("transform_param")
            layer.input_param.shape.add(dim=[batch, 3, 32, 32])
            layer.input_param.shape.add(dim=[batch])
    return param
