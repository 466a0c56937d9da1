"""Testing a net (rapa/evaluate.py): outputs averaged over batches, images counted, the same
images on every call, majority-vote passes and their accuracy, and the progress bar."""
import re

import numpy as np
import pytest
import torch

from datasets import write_lmdb
from rapa import evaluate
from rapa.net import Net
from rapa.proto import pb
from rapa.prototxt import parse_text

BATCH = 2
ITERATIONS = 4
# The class each record's image favours (its brightest channel), and its label: the batches of
# two score 1, 1/2, 0, 1 and 1/2 (batch 4 is read only by a pass that skips ahead).
PREDICTED = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
LABELS = [0, 1, 2, 1, 0, 0, 0, 1, 1, 0]

NET = """
layer { name: "data" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.0078125 }
  data_param { source: "%s" batch_size: %d backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 } }
layer { name: "ip2" type: "InnerProduct" bottom: "data" top: "ip2"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 }
    bias_filler { type: "constant" value: 0.5 } } }
"""
ACCURACY = 'layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }\n'


def make_images():
    """(10, 3, 2, 2) images, each with one bright channel; no two channel sums tie."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 50, (len(PREDICTED), 3, 2, 2))
    for k, c in enumerate(PREDICTED):
        images[k, c] += 120 + k
    return images.astype(np.uint8)


@pytest.fixture
def make_net(tmp_path):
    images = make_images()
    db = write_lmdb(tmp_path / "db", images, np.array(LABELS))
    nets = []

    def make(accuracy=True):
        net = Net(parse_text(NET % (db, BATCH) + (ACCURACY if accuracy else ""),
                             pb.NetParameter()), pb.TEST)
        with torch.no_grad():  # ip scores a class by the sum of its channel
            w, b = net.layer("ip").learnable_blobs()
            w.copy_(torch.kron(torch.eye(3), torch.ones(1, 4)))
            b.zero_()
        nets.append(net)
        return net, images
    yield make
    for net in nets:
        net.close()


def reference(net, images, iterations, accuracy=True):
    """Each output summed per batch then averaged over batches, in float64 from the records."""
    w, b = (t.detach().double().numpy() for t in net.layer("ip").learnable_blobs())
    w2, b2 = (t.detach().double().numpy() for t in net.layer("ip2").learnable_blobs())
    n = len(images)
    sums = {"ip2": 0.0, **({"acc": 0.0} if accuracy else {"ip": 0.0, "label": 0.0})}
    for i in range(iterations):
        rows = [(i * BATCH + j) % n for j in range(BATCH)]
        x = images[rows].reshape(BATCH, -1).astype(np.float64) / 128
        labels = np.array(LABELS)[rows]
        ip = x @ w.T + b
        sums["ip2"] += float((x @ w2.T + b2).sum())
        if accuracy:
            sums["acc"] += float((ip.argmax(1) == labels).mean())
        else:
            sums["ip"] += float(ip.sum())
            sums["label"] += float(labels.sum())
    return {k: v / iterations for k, v in sums.items()}


def assert_outputs(got, want):
    assert want and set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-6), k


def count_passes(net):
    calls = []
    net.layer("ip").register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_outputs_are_batch_sums_averaged_over_iterations_and_images_counted(make_net):
    net, images = make_net()
    want = reference(net, images, ITERATIONS)
    assert want["acc"] == pytest.approx(0.625)  # batches scoring 1, 1/2, 0, 1
    result = evaluate.test_net(net, ITERATIONS, progress=False)
    assert_outputs(result.outputs, want)
    assert result.images == ITERATIONS * BATCH
    assert result.vote_accuracy == {}
    assert net.training


def test_every_call_starts_at_the_first_batch(make_net):
    net, images = make_net()
    net.read_data()  # a reader left part way through
    first = evaluate.test_net(net, 3, progress=False)
    second = evaluate.test_net(net, 3, progress=False)
    assert_outputs(first.outputs, reference(net, images, 3))
    assert second == first


@pytest.mark.parametrize("votes", [1, 2, 3])
def test_each_batch_runs_once_per_vote(make_net, votes):
    net, images = make_net()
    calls = count_passes(net)
    result = evaluate.test_net(net, ITERATIONS, votes=votes, progress=False)
    assert len(calls) == ITERATIONS * votes
    want = reference(net, images, ITERATIONS)
    assert_outputs(result.outputs, want)
    assert result.images == ITERATIONS * BATCH
    # The passes agree (no random tiles), so the vote scores as one pass: averaged over batches.
    assert result.vote_accuracy == ({} if votes == 1 else
                                    {"acc": pytest.approx(want["acc"], abs=1e-9)})


def test_one_vote_is_the_default(make_net):
    net, images = make_net()
    calls = count_passes(net)
    result = evaluate.test_net(net, ITERATIONS, progress=False)
    assert len(calls) == ITERATIONS and result.vote_accuracy == {}


def test_a_net_without_accuracy_runs_each_batch_once_whatever_the_votes(make_net):
    net, images = make_net(accuracy=False)
    calls = count_passes(net)
    result = evaluate.test_net(net, ITERATIONS, votes=3, progress=False)
    assert len(calls) == ITERATIONS
    assert_outputs(result.outputs, reference(net, images, ITERATIONS, accuracy=False))
    assert result.vote_accuracy == {}
    assert result.images == ITERATIONS * BATCH


def test_a_net_that_reads_no_data_counts_no_images():
    result = evaluate.test_net(Net(pb.NetParameter(), pb.TEST), 3, votes=3, progress=False)
    assert result == evaluate.TestResult({}, {}, 0)


@pytest.mark.parametrize("label,shown", [(None, "test"), ("", "test"), ("val", "val")])
def test_the_progress_bar_counts_the_iterations(make_net, capsys, label, shown):
    net, _ = make_net()
    given = {} if label is None else {"progress_label": label}
    evaluate.test_net(net, ITERATIONS, progress=True, **given)
    err = capsys.readouterr().err
    assert err.endswith("\n")
    lines = err.split("\r")[1:]
    assert lines
    done = []
    for line in lines:
        m = re.match(re.escape(shown) + r" \[[#-]{24}\] (-?\d+)/(\d+) ", line)
        assert m, line
        assert int(m[2]) == ITERATIONS
        done.append(int(m[1]))
    assert all(1 <= d <= ITERATIONS for d in done) and done[-1] == ITERATIONS
    assert lines[-1].startswith(f"{shown} [{'#' * 24}] ")


def test_no_progress_bar_when_disabled(make_net, capsys):
    net, _ = make_net()
    evaluate.test_net(net, ITERATIONS, progress=False)
    assert capsys.readouterr().err == ""


def test_batches_past_the_end_of_the_database_are_noted(make_net):
    """10 records in batches of 2: 5 batches read each once, 6 read 2 again (as Caffe's data
    layers, the reader starts over), said in one note; a net without data reads none."""
    net, _ = make_net()
    assert evaluate.reread(net, 5) is None
    assert evaluate.reread(net, 6) == (
        "6 batches of 2 read 12 images, the database of layer 'data' holds 10: 2 are read "
        "again (they count twice)")
    assert evaluate.reread(Net(parse_text(
        'input: "x" input_shape { dim: 1 dim: 2 }', pb.NetParameter()), pb.TEST), 9) is None
