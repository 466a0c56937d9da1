"""The paper's network family: Caffe's CIFAR-10 "Full" net with RAPA tiling (section 2.2).

conv1 5x5 (32) -> ReLU -> pool1 3/2 -> LRN -> conv2 5x5 (32) -> ReLU -> pool2 3/2 -> LRN
-> conv3 5x5 (64) -> ReLU -> pool3 3/2 average -> InnerProduct (classes)

ReLU comes before every pooling (footnote 1: "pooling is done after the activation"); LRN is
Caffe's WITHIN_CHANNEL (local_size 3, alpha 5e-5, beta 0.75); fillers and multipliers are those
of Caffe's example (raw pixels minus the mean). The first two pools are MAX, AVE, MIXED or
STOCHASTIC; each conv layer may be tiled with its own tile count (the paper: 16, 4, 1).
Needs only protobuf (see _load_schema); nets/generate.py writes the files.
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path


def _load_schema():
    """The schema's protoc code, rapa/proto/rapa_pb2.py, loaded by its path: it imports only
    google.protobuf, whereas importing it through the rapa package would load torch and the
    compiled operator library, which writing the nets does not need. It is registered as
    rapa.proto.rapa_pb2, the name the package gives it, so that one process loads it once
    (protobuf refuses a second rapa.proto): the package, imported before or after, shares it."""
    name = "rapa.proto.rapa_pb2"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "rapa" / "proto" / "rapa_pb2.py"
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


pb = _load_schema()

TILINGS = ("none", "enlarged", "perforated", "image_overlap", "image_pad", "alternate",
           "random_fixed", "random")
POOLS = {"max": pb.PoolingParameter.MAX, "ave": pb.PoolingParameter.AVE,
         "mixed": pb.PoolingParameter.MIXED, "stochastic": pb.PoolingParameter.STOCHASTIC}


@dataclass(frozen=True)
class Dataset:
    name: str
    classes: int
    train_images: int
    test_images: int


DATASETS = {"cifar10": Dataset("cifar10", 10, 50000, 10000),
            "cifar100": Dataset("cifar100", 100, 50000, 10000),
            "svhn": Dataset("svhn", 10, 73257, 26032)}


def _filler(kind: str, **kw) -> pb.FillerParameter:
    return pb.FillerParameter(type=kind, **kw)


def data_layers(net: pb.NetParameter, ds: Dataset, batch: int, test_batch: int,
                brightness: float = 0.0, strong: bool = False, scale: float = 1.0,
                crop_pad: tuple[int, int] | None = None) -> None:
    """The TRAIN and TEST Data layers of `ds` (LMDBs and mean file under data/<dataset>/);
    training augmentation: mirror (not for SVHN), brightness, strong augmentation, and a
    random crop_pad = (crop, pad) window of the padded image."""
    root = f"data/{ds.name}"
    for phase, split, size in ((pb.TRAIN, "train", batch), (pb.TEST, "test", test_batch)):
        layer = net.layer.add(name="data", type="Data", top=["data", "label"])
        layer.include.add(phase=phase)
        tp = layer.transform_param
        tp.mean_file = f"{root}/mean.binaryproto"
        if scale != 1.0:
            tp.scale = scale
        if phase == pb.TRAIN:
            tp.mirror = ds.name != "svhn"  # mirrored digits are other digits
            if brightness:
                tp.brightness = brightness
            if crop_pad:
                tp.crop_size, tp.pad = crop_pad
            if strong:
                tp.strong_augmentation.max_scale = 1.3
        layer.data_param.source = f"{root}/{ds.name}_{split}_lmdb"
        layer.data_param.batch_size = size
        layer.data_param.backend = pb.DataParameter.LMDB


def conv(net, name, bottom, out, std, tiling: str, tiles: int, lr_mults=(1, 2),
         rpu: str | None = None, hic: bool | str = False):
    layer = net.layer.add(name=name, type="Convolution", bottom=[bottom], top=[name])
    layer.param.add(lr_mult=lr_mults[0])
    layer.param.add(lr_mult=lr_mults[1])
    cp = layer.convolution_param
    cp.num_output, cp.kernel_size[:], cp.pad[:], cp.stride[:] = out, [5], [2], [1]
    cp.weight_filler.CopyFrom(_filler("gaussian", std=std))
    cp.bias_filler.CopyFrom(_filler("constant"))
    if tiling not in ("none", "enlarged") and tiles > 1:
        cp.tiling_param.scheme = tiling
        cp.tiling_param.num_tiles = tiles
    if rpu:
        analog(cp.rpu_param, rpu)
    if hic:
        hic_param(cp.hic_param, hic)
    return name


def hic_param(param: pb.HICParameter, hic: bool | str) -> None:
    """HIC arrays with rapa.analog.hic's defaults and weight_range ANALOG_WEIGHT_RANGE; hic
    "pulsed": their multi-level devices programmed by SET pulses (programming "pulsed")."""
    param.weight_range = ANALOG_WEIGHT_RANGE
    if isinstance(hic, str):
        param.programming = hic


# The weights each analog layer must be able to reach (rapa.analog.MappingParameters): the
# floating-point Full net's grow to at most 0.16-0.22 per layer in 10 epochs (conv1 from a
# filler of std 1e-4), 99.5% of them within 0.15 times the devices' spread of bounds
# (tools/analog_reach.py); a larger range costs resolution and signal against the arrays'
# noise (2 epochs, random tiling: 60.3% error at 0.15, 67.8% at 0.3). Without it each array's
# scale comes from its largest initial weight and conv1 could not pass about 1e-3 (README).
ANALOG_WEIGHT_RANGE = 0.15


def analog(param, preset: str) -> None:
    """An rpu_param: the preset, with room for the weights to grow (ANALOG_WEIGHT_RANGE)."""
    param.preset = preset
    param.mapping.weight_range = ANALOG_WEIGHT_RANGE


def pool(net, name, bottom, method, beta_decay=0.0):
    layer = net.layer.add(name=name, type="Pooling", bottom=[bottom], top=[name])
    pp = layer.pooling_param
    pp.pool, pp.kernel_size, pp.stride = method, 3, 2
    if method == pb.PoolingParameter.MIXED:
        layer.param.add(lr_mult=1, decay_mult=beta_decay)  # beta: learned, not decayed
    return name


def relu(net, name, blob):
    net.layer.add(name=name, type="ReLU", bottom=[blob], top=[blob])
    return blob


def lrn(net, name, bottom):
    layer = net.layer.add(name=name, type="LRN", bottom=[bottom], top=[name])
    lp = layer.lrn_param
    lp.local_size, lp.alpha, lp.beta = 3, 5e-5, 0.75
    lp.norm_region = pb.LRNParameter.WITHIN_CHANNEL
    return name


# Section 2.2's rates at batch 10 (no tiling, tiling) and Fig. 5's rate for the tile sweep.
PAPER_RATE = {False: 0.005, True: 0.025}
SWEEP_RATE = 0.05
# Our rates are the paper's times this, with momentum 0.9: Caffe's rate for this net (0.001 at
# batch 100) scaled to batch 10 is 0.0001, a 50th of the paper's 0.005. With Caffe's input
# range (raw pixels minus the mean) the paper's own rates diverge (README, "The paper's nets").
OUR_RATE_FACTOR = 0.02
OUR_MOMENTUM = 0.9  # Caffe's example; the paper names none
# paper_rates: the input range under which the paper's rates train (README): pixels / 256, and
# conv1's filler 256 times wider, so that conv1's outputs at the start are the raw range's.
PAPER_INPUT_SCALE = 1 / 256


def full_net(dataset: str = "cifar10", tiling: str = "random", pools: str = "max",
             tiles=(16, 4, 1), batch: int = 10, test_batch: int = 100,
             brightness: float = 20.0, strong: bool = False,
             rpu: str | None = None, paper_rates: bool = False,
             hic: bool | str = False) -> pb.NetParameter:
    """rpu: a preset of rapa.analog (e.g. rasch_2019): every Convolution and the InnerProduct
    on simulated analog arrays, one array per kernel replica (section 3.2). hic: on hybrid
    binary + multi-level PCM arrays instead (rapa.analog.hic, its defaults, weight_range
    ANALOG_WEIGHT_RANGE; "pulsed": programming "pulsed", see hic_param). paper_rates: the
    input (pixels minus the mean) scaled by PAPER_INPUT_SCALE and conv1's filler widened to
    match, for solver(paper_rates=True)."""
    scale = PAPER_INPUT_SCALE if paper_rates else 1.0
    ds = DATASETS[dataset]
    if tiling not in TILINGS:
        raise ValueError(f"tiling must be one of {TILINGS}")
    channels = (54, 64, 64) if tiling == "enlarged" else (32, 32, 64)
    net = pb.NetParameter(name=f"{dataset}_full_{tiling}_{pools}" + ("_rpu" if rpu else "")
                          + ("_hic" if hic else "") + (f"_{hic}" if isinstance(hic, str) else ""))
    data_layers(net, ds, batch, test_batch, brightness, strong, scale)
    method = POOLS[pools]
    x = conv(net, "conv1", "data", channels[0], 1e-4 / scale, tiling, tiles[0], rpu=rpu, hic=hic)
    x = pool(net, "pool1", relu(net, "relu1", x), method)
    x = lrn(net, "norm1", x)
    x = conv(net, "conv2", x, channels[1], 0.01, tiling, tiles[1], rpu=rpu, hic=hic)
    x = pool(net, "pool2", relu(net, "relu2", x), method)
    x = lrn(net, "norm2", x)
    x = conv(net, "conv3", x, channels[2], 0.01, tiling, tiles[2], rpu=rpu, hic=hic)
    x = pool(net, "pool3", relu(net, "relu3", x), pb.PoolingParameter.AVE)
    ip = net.layer.add(name="ip1", type="InnerProduct", bottom=[x], top=["ip1"])
    ip.param.add(lr_mult=1, decay_mult=250)
    ip.param.add(lr_mult=2, decay_mult=0)
    ip.inner_product_param.num_output = ds.classes
    ip.inner_product_param.weight_filler.CopyFrom(_filler("gaussian", std=0.01))
    ip.inner_product_param.bias_filler.CopyFrom(_filler("constant"))
    if rpu:
        analog(ip.inner_product_param.rpu_param, rpu)
    if hic:
        hic_param(ip.inner_product_param.hic_param, hic)
    acc = net.layer.add(name="accuracy", type="Accuracy", bottom=["ip1", "label"],
                        top=["accuracy"])
    acc.include.add(phase=pb.TEST)
    net.layer.add(name="loss", type="SoftmaxWithLoss", bottom=["ip1", "label"], top=["loss"])
    return net


def solver(net_path: str, dataset: str, tiled: bool, prefix: str, batch: int = 10,
           test_batch: int = 100, epochs: int = 700, step_epochs: int = 300,
           warmup_epochs: int = 1, test_every_epochs: float = 1, votes: int = 1,
           paper_rate: float | None = None, analog: bool = False, paper_rates: bool = False,
           gamma: float = 0.1, weight_decay: float = 1e-4) -> pb.SolverParameter:
    """Section 2.2: the rate 5 times larger tiled than untiled (paper_rate, default
    PAPER_RATE[tiled]); x gamma every step_epochs; warm-up at a 20th of the rate; weight decay
    1e-4 (Caffe multiplies it by the rate); batch 10. The rate is the paper's without momentum
    if paper_rates (for a full_net(paper_rates=True)), else ours: the paper's times
    OUR_RATE_FACTOR with momentum OUR_MOMENTUM."""
    ds = DATASETS[dataset]
    epoch = -(-ds.train_images // batch)
    sp = pb.SolverParameter(net=net_path)
    sp.test_iter.append(-(-ds.test_images // test_batch))
    sp.test_interval = int(test_every_epochs * epoch)
    rate = PAPER_RATE[tiled] if paper_rate is None else paper_rate
    base_lr, momentum = (rate, 0.0) if paper_rates else (rate * OUR_RATE_FACTOR, OUR_MOMENTUM)
    if analog and momentum:
        # Analog arrays update by pulses, without momentum: the same step size as momentum
        # SGD's steady state, rate / (1 - momentum). Biases stay digital, without momentum too.
        # (Computed in double before the float fields hold it: 0.005, not 0.004999999.)
        base_lr, momentum = base_lr / (1 - momentum), 0.0
    sp.base_lr, sp.momentum = base_lr, momentum
    sp.weight_decay = weight_decay
    sp.lr_policy = "step"
    sp.gamma = gamma
    sp.stepsize = step_epochs * epoch
    sp.warmup_iter = warmup_epochs * epoch
    sp.warmup_factor = 0.05
    sp.display = max(100, epoch // 10)
    sp.average_loss = sp.display
    sp.max_iter = epochs * epoch
    sp.snapshot = max(sp.test_interval, epoch)
    sp.snapshot_prefix = prefix
    sp.solver_mode = pb.SolverParameter.CPU
    sp.random_seed = 1
    sp.test_votes = votes
    return sp
