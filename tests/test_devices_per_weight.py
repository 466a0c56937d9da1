"""Several devices per weight (device.devices_per_weight, Gokmen, Onen, Haensch 2017; aihwkit's
VectorUnitCell): each device its own draws, the weight their mean, the update policies, the
reduced spread of the update, snapshots and configuration errors."""
import dataclasses

import pytest
import torch

import rapa  # noqa: F401
from rapa.analog import RPUConfig, from_proto, perfect
from rapa.analog.arrays import AnalogArrays
from rapa.errors import RapaError
from rapa.layers.base import make_layer
from rapa.net import Net
from rapa.proto import pb
from rapa.prototxt import parse_text
from rapa.snapshot import load_weights, save_weights


def _arrays(n, policy="all", shape=(2, 3, 4), **device):
    cfg = perfect()
    cfg.device = dataclasses.replace(cfg.device, devices_per_weight=n, update_policy=policy,
                                     **device)
    return AnalogArrays(cfg, shape).double()


def test_each_device_draws_its_own_variation_and_the_weight_is_their_mean():
    torch.manual_seed(0)
    one = _arrays(1)
    torch.manual_seed(0)
    three = _arrays(3)
    # The first device's draws are the single device's; the others differ.
    assert three.dw_up.shape == (6, 3, 4) and three.shape == (2, 3, 4)
    assert not torch.equal(three.dw_up[:2], three.dw_up[2:4])
    w = torch.full((2, 3, 4), 0.1, dtype=torch.float64)
    w[0, 0, 0] = 5.0  # beyond every device's bound: each device clips at its own
    clipped = three.map_(w)
    devices = three.device_weights.view(3, 2, 3, 4)
    assert clipped == 3  # one weight, on each of its 3 devices
    assert torch.equal(devices[:, 0, 0, 0], three.w_max.view(3, 2, 3, 4)[:, 0, 0, 0])
    assert (devices[:, 1] == 0.1).all()
    assert torch.equal(w, devices.mean(0))
    assert w[0, 0, 0] == three.w_max.view(3, 2, 3, 4)[:, 0, 0, 0].mean()
    assert one.state_names() == ("dw_up", "dw_down", "w_min", "w_max", "out_scale")
    assert three.state_names()[-2:] == ("device_weights", "updates")


def _one_update(arrays, weight, lr=0.01, rows=1, generator=None):
    t, o, k = arrays.shape
    x = torch.ones(rows, k, dtype=weight.dtype) * 0.5
    d = -torch.ones(rows, o, dtype=weight.dtype) * 0.5
    arrays.pending.append((x, d, torch.zeros(rows, dtype=torch.long)))
    arrays.apply_update(weight, lr, generator)


@pytest.mark.parametrize("policy", ["single_sequential", "single_random"])
def test_a_single_device_policy_pulses_one_device_per_update(policy):
    torch.manual_seed(1)
    arrays = _arrays(3, policy)
    w = torch.zeros(2, 3, 4, dtype=torch.float64)
    arrays.map_(w)
    chosen = []
    for _ in range(6):
        before = arrays.device_weights.view(3, 2, 3, 4).clone()
        _one_update(arrays, w, generator=torch.Generator().manual_seed(len(chosen)))
        after = arrays.device_weights.view(3, 2, 3, 4)
        moved = [i for i in range(3) if not torch.equal(before[i], after[i])]
        assert len(moved) == 1 and torch.equal(before[:, 1], after[:, 1])  # array 1: no rows
        chosen += moved
        assert torch.equal(w, after.mean(0))
    if policy == "single_sequential":
        assert chosen == [0, 1, 2, 0, 1, 2] and arrays.updates.item() == 6
    else:
        assert chosen == [int(torch.randint(3, (1,), generator=torch.Generator().manual_seed(i)))
                          for i in range(6)]


def test_all_devices_take_their_own_pulses_and_the_spread_of_the_update_shrinks():
    """One update of 40,000 weights with the same x_i d_j: each device's change varies from
    device to device (dw_min_dtod), pulse to pulse (dw_min_std) and by its pulse count; the
    weight's change, the mean of n independent ones, spreads sqrt(n) times less."""
    def spread(n):
        torch.manual_seed(2)
        arrays = _arrays(n, shape=(1, 200, 200), dw_min=0.01, w_max=10.0, w_min=-10.0)
        w = torch.zeros(1, 200, 200, dtype=torch.float64)
        arrays.map_(w)
        _one_update(arrays, w, lr=0.1, generator=torch.Generator().manual_seed(3))
        return w.mean().item(), w.std().item()

    (m1, s1), (m4, s4) = spread(1), spread(4)
    # The same update on average (within the few percent that pulse trains shared along a
    # row and a column leave in the mean over the array).
    assert m4 == pytest.approx(m1, rel=0.05)
    assert s4 / s1 == pytest.approx(0.5, rel=0.03)


def test_devices_per_weight_one_is_the_single_device():
    torch.manual_seed(4)
    base = _arrays(1)
    torch.manual_seed(4)
    cfg = perfect()
    plain = AnalogArrays(cfg, (2, 3, 4)).double()
    for name in ("dw_up", "dw_down", "w_min", "w_max"):
        assert torch.equal(getattr(base, name), getattr(plain, name))
    assert not hasattr(base, "device_weights")


LAYER = ('name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { '
         'num_output: 5 weight_filler { type: "gaussian" std: 0.3 } rpu_param { device { '
         'devices_per_weight: 3 update_policy: "single_sequential" } } }')


def test_the_devices_and_the_update_count_travel_with_the_model(tmp_path):
    net_text = ('name: "n" layer { name: "x" type: "Input" top: "x" input_param { shape { '
                'dim: 2 dim: 6 } } } layer { ' + LAYER + ' }')
    torch.manual_seed(5)
    net = Net(parse_text(net_text, pb.NetParameter()), pb.TRAIN)
    layer = net.layer("ip")
    arrays = layer.module.arrays
    _one_update(arrays, layer.module.weight.data)
    save_weights(net, tmp_path / "m.caffemodel")
    torch.manual_seed(6)
    other = Net(parse_text(net_text, pb.NetParameter()), pb.TRAIN)
    load_weights(other, tmp_path / "m.caffemodel")
    theirs = other.layer("ip").module.arrays
    assert torch.equal(theirs.device_weights, arrays.device_weights)
    assert theirs.updates.item() == 1
    assert torch.equal(other.layer("ip").module.weight, layer.module.weight)
    for n in (1, 2):  # another device count: the message names it
        text = net_text.replace("devices_per_weight: 3", f"devices_per_weight: {n}")
        with pytest.raises(RapaError, match="devices_per_weight"):
            load_weights(Net(parse_text(text, pb.NetParameter()), pb.TRAIN),
                         tmp_path / "m.caffemodel")


@pytest.mark.parametrize("field,message", [
    ("devices_per_weight: 0", "device.devices_per_weight must be in [1, 64], got 0"),
    ('update_policy: "some"', "device.update_policy must be one of all, single_random, "
                              "single_sequential, got 'some'"),
])
def test_bad_device_counts_and_policies_name_the_layer(field, message):
    with pytest.raises(RapaError) as e:
        make_layer(parse_text(LAYER.replace('devices_per_weight: 3 update_policy: '
                                            '"single_sequential"', field), pb.LayerParameter()),
                   [(2, 6)], pb.TRAIN)
    assert "layer 'ip'" in str(e.value) and message in str(e.value)
    cfg = from_proto(parse_text('device { devices_per_weight: 2 }', pb.RPUParameter()))
    assert cfg.device.devices_per_weight == 2 and isinstance(cfg, RPUConfig)


def test_dropped_patches_pulse_no_device():
    torch.manual_seed(7)
    arrays = _arrays(3, "all")
    w = torch.zeros(2, 3, 4, dtype=torch.float64)
    arrays.map_(w)
    before = arrays.device_weights.clone()
    x = torch.full((2, 4), 0.5, dtype=torch.float64)
    arrays.pending.append((x, -x[:, :3], torch.tensor([-1, 0])))  # row 0 dropped, row 1: array 0
    arrays.apply_update(w, 0.01)
    moved = (arrays.device_weights != before).view(3, 2, 3, 4)
    assert not moved[:, 1].any() and moved[:, 0].any(dim=(1, 2)).all()  # every device of array 0
    assert arrays.state_problem(6, torch.tensor([-1.0])) == ("updates (the count of updates) "
                                                             "must be >= 0")
    assert arrays.state_problem(5, torch.tensor([float("nan")])) == ("device_weights must be "
                                                                     "finite")
