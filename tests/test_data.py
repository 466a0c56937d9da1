"""Datum records, LMDB reading, transforms and the prefetcher, on data the tests make."""
import os
import pathlib
import re
import signal
import threading
import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datasets import random_images, write_lmdb
from rapa.data.datum import decode, encode_raw
from rapa.data.lmdb_source import LmdbSource
from rapa.data.lmdb_writer import LmdbWriter
from rapa.data.prefetch import (Prefetcher, ended_abnormally, is_worker_death,
                                 stop_worker_processes, worker_death_line, worker_stopped)
from rapa.data.transform import Transformer
from rapa.errors import RapaError, first_line
from rapa.proto import pb
from rapa.prototxt import parse_text


@pytest.mark.parametrize("encoded", [False, True])
def test_lmdb_round_trip(tmp_path, encoded):
    images, labels = random_images(12, h=8, w=6)
    db = write_lmdb(tmp_path / "db", images, labels, encoded=encoded)
    src = LmdbSource(db)
    assert len(src) == 12 and src.shape == (3, 8, 6)
    got, got_labels = src.read_many(10, 4)  # wraps around the end
    np.testing.assert_array_equal(got, images[[10, 11, 0, 1]])
    np.testing.assert_array_equal(got_labels, labels[[10, 11, 0, 1]])


def test_bad_records_name_database_and_key(tmp_path):
    images, labels = random_images(3, h=8, w=8)
    with LmdbWriter(tmp_path / "db") as w:
        w.put(b"00000", encode_raw(images[0], labels[0]))
        w.put(b"00001", encode_raw(images[1][:, :4], labels[1]))  # another shape
        w.put(b"00002", b"\xff\xff not a datum")
    src = LmdbSource(tmp_path / "db")
    with pytest.raises(RapaError, match=r"db, key '00001': image of shape \(3, 4, 8\), but the "
                                        r"first record .* has \(3, 8, 8\)"):
        src.read_many(0, 2)
    with pytest.raises(RapaError, match=r"db, key '00002': not a Datum record"):
        src.read_many(2, 1)
    d = pb.Datum(channels=3, height=2, width=2, data=b"abc")
    with pytest.raises(Exception, match="holds 3 bytes, but 3x2x2 = 12"):
        decode(d.SerializeToString())


def test_missing_database(tmp_path):
    with pytest.raises(RapaError, match=f"database {tmp_path / 'nope'} does not exist"):
        LmdbSource(tmp_path / "nope")


def transformer(text, shape=(3, 8, 8), train=True, mean=None):
    return Transformer(parse_text(text, pb.TransformationParameter()), shape, train, mean, "t")


def test_transform_crop_mirror_mean_scale():
    images, _ = random_images(16, h=8, w=8)
    mean = np.random.default_rng(0).uniform(0, 255, (3, 8, 8)).astype(np.float32)
    x = torch.from_numpy(images).double()
    m = torch.from_numpy(mean).double()
    # Test phase: centred crop, no mirror; the mean file is cropped with the image.
    t = transformer("crop_size: 6 mirror: true scale: 0.5", train=False, mean=mean)
    out = t(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.double(), (x - m)[:, :, 1:7, 1:7] * 0.5, atol=1e-4, rtol=0)
    # Training: each output is some crop of (image - mean), possibly mirrored.
    t = transformer("crop_size: 6 mirror: true scale: 0.5", train=True, mean=mean)
    out = t(images, torch.Generator().manual_seed(1)).double()
    flips = 0
    for n in range(16):
        found = None
        for oy in range(3):
            for ox in range(3):
                ref = ((x[n] - m) * 0.5)[:, oy:oy + 6, ox:ox + 6]
                for flipped in (False, True):
                    r = ref.flip(2) if flipped else ref
                    if torch.allclose(out[n], r, atol=1e-4):
                        found = flipped
        assert found is not None, f"image {n} is no mirrored crop of its source"
        flips += found
    assert 0 < flips < 16


def test_transform_mean_values_and_brightness():
    images, _ = random_images(200, h=4, w=4)
    t = transformer("mean_value: 10 mean_value: 20 mean_value: 30 brightness: 15", (3, 4, 4))
    out = t(images, torch.Generator().manual_seed(0))
    shift = out - (torch.from_numpy(images).float() - torch.tensor([10., 20., 30.]).view(3, 1, 1))
    per_image = shift.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-4)
    assert per_image.abs().max() <= 15 and per_image.std() > 5
    test_t = transformer("brightness: 15", (3, 4, 4), train=False)
    torch.testing.assert_close(test_t(images, torch.Generator()),
                               torch.from_numpy(images).float())


def test_strong_augmentation_is_a_zoom():
    # A linear ramp stays a ramp with a slope of at least the original under zooming in.
    ramp = np.tile(np.arange(32, dtype=np.uint8) * 8, (4, 3, 32, 1))
    t = transformer("strong_augmentation { max_scale: 1.3 }", (3, 32, 32))
    out = t(ramp, torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 32, 32)
    slope = (out[:, :, :, 20] - out[:, :, :, 10]) / 10
    assert torch.all(slope > 8 / 1.31 - 0.1) and torch.all(slope < 8 + 0.1)
    assert not torch.allclose(out[0], out[1])


def test_transform_errors():
    with pytest.raises(RapaError, match="crop .* is larger than the images"):
        transformer("crop_size: 9")
    with pytest.raises(RapaError, match="mean_value needs 1 or 3 values, got 2"):
        transformer("mean_value: 1 mean_value: 2")
    with pytest.raises(RapaError, match="the mean file has shape"):
        transformer("", mean=np.zeros((3, 4, 4), np.float32))
    for text, message in (("max_scale: 0.5", "max_scale must be in [1, 100], got 0.5"),
                          ("max_scale: 1e30", "max_scale must be in [1, 100], got 1e+30"),
                          ("max_scale: nan", "max_scale must be in [1, 100], got nan"),
                          ("scale_jitter: -1", "scale_jitter must be in [0, max_scale], got -1"),
                          ("max_scale: 2 scale_jitter: 3", "scale_jitter must be in [0, "
                                                           "max_scale], got 3")):
        with pytest.raises(RapaError, match=re.escape(f"t: strong_augmentation.{message}")):
            transformer(f"strong_augmentation {{ {text} }}")
    transformer("strong_augmentation { max_scale: 100 scale_jitter: 0 }")
    transformer("strong_augmentation { max_scale: 2 scale_jitter: 2 }")


def test_force_color_and_force_gray_together_are_refused(tmp_path):
    from rapa.net import Net
    images, labels = random_images(4, h=4, w=4)
    db = write_lmdb(tmp_path / "db", images, labels)
    text = (f'layer {{ name: "d" type: "Data" top: "x" top: "y" data_param {{ source: "{db}" '
            f'batch_size: 2 backend: LMDB }} transform_param {{ force_color: true '
            f'force_gray: true }} }}')
    with pytest.raises(RapaError, match="layer 'd' .*force_color and force_gray cannot both be "
                                        "set"):
        Net(parse_text(text, pb.NetParameter()), pb.TEST)


def test_prefetcher_batches_depend_on_index_alone(tmp_path):
    images, labels = random_images(25, h=8, w=8)
    src = LmdbSource(write_lmdb(tmp_path / "db", images, labels))
    t = transformer("crop_size: 6 mirror: true brightness: 10")
    a = Prefetcher(src, t, batch_size=10, seed=5)
    first = [next(a) for _ in range(5)]
    assert first[2][1].tolist() == labels[[20, 21, 22, 23, 24, 0, 1, 2, 3, 4]].tolist()
    b = Prefetcher(src, t, batch_size=10, seed=5)
    b.seek(3)
    x, y = next(b)
    torch.testing.assert_close(x, first[3][0])
    torch.testing.assert_close(y, first[3][1])
    c = Prefetcher(src, t, batch_size=10, seed=6)
    assert not torch.equal(next(c)[0], first[0][0])
    a.close(), b.close(), c.close()


def test_transform_pad_then_random_crop_pads_with_zero_after_the_mean():
    images, _ = random_images(24, h=6, w=6)
    mean = np.random.default_rng(1).uniform(0, 255, (3, 6, 6)).astype(np.float32)
    x = torch.from_numpy(images).float()
    padded = F.pad(x - torch.from_numpy(mean), (2, 2, 2, 2))  # (24, 3, 10, 10)
    t = transformer("crop_size: 6 pad: 2 mirror: true scale: 0.5", shape=(3, 6, 6), mean=mean)
    out = t(images, torch.Generator().manual_seed(3))
    assert out.shape == (24, 3, 6, 6)
    seen = set()
    for i in range(24):
        windows = {(oy, ox, flip): (padded[i, :, oy:oy + 6, ox:ox + 6].flip(2) if flip else
                                    padded[i, :, oy:oy + 6, ox:ox + 6]) * 0.5
                   for oy in range(5) for ox in range(5) for flip in (False, True)}
        match = [k for k, v in windows.items() if torch.allclose(out[i], v, atol=1e-4)]
        assert match, f"image {i} is no window of the padded, mean-subtracted image"
        seen.update(match)
    assert len({(oy, ox) for oy, ox, _ in seen}) > 8 and {f for _, _, f in seen} == {False, True}
    # At test time there is no padding: the centred crop of the image itself.
    test = transformer("crop_size: 6 pad: 2", shape=(3, 6, 6), train=False, mean=mean)
    torch.testing.assert_close(test(images, torch.Generator()), x - torch.from_numpy(mean))
    with pytest.raises(RapaError, match="pad 2 needs crop_size"):
        transformer("pad: 2")


def test_mean_files_in_every_form_caffe_reads(tmp_path):
    """Caffe's Blob::FromProto: legacy num/channels/height/width or `shape`, float `data` or
    `double_data`; of stacked means (num 2) the DataTransformer subtracts the first."""
    from rapa.layers.data import read_mean
    from rapa.prototxt import write_binary
    rng = np.random.default_rng(3)
    first, second = rng.uniform(0, 255, (2, 3, 4, 4))

    def mean_file(name, **fields):
        blob = pb.BlobProto(**{k: v for k, v in fields.items() if k != "dims"})
        if "dims" in fields:
            blob.shape.dim.extend(fields["dims"])
        write_binary(tmp_path / name, blob)
        return tmp_path / name

    stacked = mean_file("stacked", num=2, channels=3, height=4, width=4,
                        data=np.stack([first, second]).ravel().tolist())
    np.testing.assert_array_equal(read_mean(stacked), first.astype(np.float32))
    double = mean_file("double", num=1, channels=3, height=4, width=4,
                       double_data=first.ravel().tolist())
    np.testing.assert_array_equal(read_mean(double), first.astype(np.float32))
    chw = mean_file("chw", dims=[3, 4, 4], data=second.ravel().tolist())
    np.testing.assert_array_equal(read_mean(chw), second.astype(np.float32))
    flat = mean_file("flat", dims=[48], data=first.ravel().tolist())
    with pytest.raises(RapaError, match=r"mean file .*flat: shape \(48,\) is not \(num, "):
        read_mean(flat)
    five = mean_file("five", dims=[1, 3, 4, 4, 1], data=first.ravel().tolist())
    with pytest.raises(RapaError, match=r"mean file .*five: shape \(1, 3, 4, 4, 1\) is not "):
        read_mean(five)
    short = mean_file("short", num=1, channels=3, height=4, width=4, data=[1.0] * 47)
    with pytest.raises(RapaError, match=r"mean file .*short: a blob of shape \(1, 3, 4, 4\) "
                                        r"holds 47 values"):
        read_mean(short)


def _compute_mean(db, tmp_path):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "rapa", "compute-mean", str(db),
                           str(tmp_path / "m.binaryproto")], capture_output=True, text=True)


def test_a_database_cut_short_or_damaged_is_named_not_a_crash(tmp_path):
    """A partly copied data.mdb would be read past its end through the memory map (SIGBUS):
    its size is checked against its header first. A damaged page names the database."""
    import os
    import shutil
    db = tmp_path / "db"
    write_lmdb(db, *random_images(300, h=32, w=32, classes=3))
    size = (db / "data.mdb").stat().st_size
    cut = tmp_path / "cut"
    shutil.copytree(db, cut)
    os.truncate(cut / "data.mdb", 8192)
    proc = _compute_mean(cut, tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"database {cut}: data.mdb is cut short (8192 bytes of the {size} its header " \
           f"names)" in proc.stderr
    for page in (2, size // 4096 // 2, size // 4096 - 1):  # first, middle and last page
        bad = tmp_path / f"bad{page}"
        shutil.copytree(db, bad)
        with open(bad / "data.mdb", "r+b") as f:
            f.seek(4096 * page)
            f.write(np.random.default_rng(page).bytes(4096))
        proc = _compute_mean(bad, tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(f"rapa compute-mean: error: database {bad}: damaged (")


@pytest.mark.parametrize("batch", [7, 2000])
def test_the_writer_grows_its_map_as_records_come(tmp_path, batch):
    """The map starts small (a cluster's ulimit -v refuses a terabyte of address space) and
    doubles when full, redoing the open transaction: every record arrives, in order."""
    images, labels = random_images(60, h=32, w=32, classes=5)
    with LmdbWriter(tmp_path / "db", batch=batch, map_size=64 << 10) as w:  # 64 KiB: ~20 images
        for i in range(60):
            w.put(b"%05d" % i, encode_raw(images[i], labels[i]))
    assert w.map_size >= 60 * 3 * 32 * 32  # it grew, several times
    got, got_labels = LmdbSource(tmp_path / "db").read_many(0, 60)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("threads,world", [(3, 1), (2, 2)])
def test_several_prefetch_threads_give_the_same_batches_in_order(tmp_path, threads, world):
    images, labels = random_images(25, h=8, w=8)
    src = LmdbSource(write_lmdb(tmp_path / "db", images, labels))
    t = transformer("crop_size: 6 mirror: true brightness: 10")
    one = Prefetcher(src, t, batch_size=4, seed=5, depth=2)
    many = Prefetcher(src, t, batch_size=4, seed=5, depth=5, threads=threads)
    for p in (one, many):
        p.shard(world - 1, world)  # the last process of `world`
    try:
        for step in range(9):  # past the records' end, and past the threads' first turn
            x, y = next(many)
            ref = next(one)
            assert torch.equal(x, ref[0]) and torch.equal(y, ref[1]), step
        assert many.next_index == one.next_index == 9 * world
        many.seek(5)  # a resume: the turns start again from there
        one.seek(5)
        for step in range(4):
            assert torch.equal(next(many)[0], next(one)[0]), step
        assert len(many._workers) == threads
    finally:
        one.close(), many.close()
    assert many._workers == []


def test_a_bad_record_in_a_prefetch_thread_is_raised_in_turn(tmp_path):
    images, labels = random_images(12, h=8, w=8, classes=3)
    labels[9] = 7  # batch 2 (records 8-11) of a 3-class net
    src = LmdbSource(write_lmdb(tmp_path / "db", images, labels))
    p = Prefetcher(src, transformer(""), batch_size=4, seed=1, threads=3)
    p.limit_labels(3, None, "the loss")
    try:
        next(p), next(p)  # batches 0 and 1 come first, whatever thread 2 found
        with pytest.raises(RapaError, match="key .*: label 7, but the loss takes labels in "
                                            "\\[0, 3\\)"):
            next(p)
    finally:
        p.close()


def test_the_data_layer_takes_its_threads_and_refuses_too_many(tmp_path, monkeypatch):
    from rapa.net import Net
    from rapa.proto import pb
    from rapa.prototxt import parse_text
    write_lmdb(tmp_path / "db", *random_images(8, h=6, w=6))
    monkeypatch.chdir(tmp_path)
    text = ('layer { name: "d" type: "Data" top: "x" data_param { source: "db" batch_size: 2 '
            'threads: %d } }')
    net = Net(parse_text(text % 3, pb.NetParameter()), pb.TRAIN)
    assert net.layer("d").prefetcher.threads == 3
    assert net.read_data()["x"].shape == (2, 3, 6, 6)
    net.close()
    for bad in (0, 65):
        with pytest.raises(RapaError, match=f"layer 'd'.*data_param.threads must be in "
                                            f"\\[1, 64\\], got {bad}"):
            Net(parse_text(text % bad, pb.NetParameter()), pb.TRAIN)


def _with_workers(tmp_path, batch_size: int, processes: int) -> Prefetcher:
    """A prefetcher with worker processes over a database of 12 small images."""
    images, labels = random_images(12, h=8, w=8)
    src = LmdbSource(write_lmdb(tmp_path / "db", images, labels))
    return Prefetcher(src, transformer(""), batch_size=batch_size, seed=1, processes=processes)


def _worker_pids(p: Prefetcher) -> list[int]:
    return [w.pid for w in p._loader._iterator._workers]


def test_worker_processes_give_the_same_batches_in_order_without_touching_torch_s_rng(
        tmp_path):
    """data_param.processes: chunks of batches from worker processes equal one thread's
    batches, across chunk ends, after a seek into the middle of a chunk and after a reseed;
    torch's global generator (which random tiling draws from) is left alone; close ends them."""
    import multiprocessing
    images, labels = random_images(25, h=8, w=8)
    src = LmdbSource(write_lmdb(tmp_path / "db", images, labels))
    t = transformer("crop_size: 6 mirror: true brightness: 10 "
                    "strong_augmentation { max_scale: 1.3 }")
    one = Prefetcher(src, t, batch_size=4, seed=5)
    many = Prefetcher(src, t, batch_size=4, seed=5, processes=2)
    assert many.chunk_batches == 64  # 256 images a chunk: a step of 2 per batch crosses chunks
    for p in (one, many):
        p.shard(1, 2)
    rng = torch.get_rng_state()
    try:
        for step in range(140):
            x, y = next(many)
            ref = next(one)
            assert torch.equal(x, ref[0]) and torch.equal(y, ref[1]), step
            assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert many.next_index == one.next_index == 280
        for p in (one, many):
            p.seek(33)
        for step in range(70):
            assert torch.equal(next(many)[0], next(one)[0]), step
        pids = _worker_pids(many)
        for p in (one, many):
            p.seed = 6
        for step in range(3):
            assert torch.equal(next(many)[0], next(one)[0]), step
        assert _worker_pids(many) == pids  # a seek or a reseed keeps the workers
        assert torch.equal(torch.get_rng_state(), rng)
        torch_s_handler = signal.getsignal(signal.SIGCHLD)
        assert callable(torch_s_handler)
    finally:
        one.close(), many.close()
    assert signal.getsignal(signal.SIGCHLD) is torch_s_handler  # held while closing only
    deadline = time.time() + 10
    while multiprocessing.active_children() and time.time() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("bad_batch", [0, 2])  # first of its chunk, or inside it
def test_a_bad_record_in_a_worker_process_is_raised_in_turn(tmp_path, bad_batch):
    images, labels = random_images(12, h=8, w=8, classes=3)
    labels[bad_batch * 4 + 1] = 7
    src = LmdbSource(write_lmdb(tmp_path / "db", images, labels))
    p = Prefetcher(src, transformer(""), batch_size=4, seed=1, processes=2)
    p.limit_labels(3, None, "the loss")
    try:
        for _ in range(bad_batch):
            next(p)
        for again in range(2):  # a later read starts at the bad batch again
            with pytest.raises(RapaError, match="key .*: label 7, but the loss takes labels in "
                                                "\\[0, 3\\)") as e:
                next(p)
            assert str(e.value).startswith(f"database {tmp_path / 'db'}, key ")
            assert "\n" not in str(e.value) and p.next_index == bad_batch
    finally:
        p.close()


def test_any_other_error_in_a_worker_process_comes_back_in_one_line(tmp_path):
    images, labels = random_images(12, h=8, w=8)
    src = LmdbSource(write_lmdb(tmp_path / "db", images, labels))
    p = Prefetcher(src, transformer(""), batch_size=4, seed=1, processes=1)

    def transform(images, gen):  # what a bug in a transform would do, in the worker
        raise ValueError("odd pixels\non two lines")
    p.reader.transform = transform
    try:
        with pytest.raises(RapaError) as e:
            next(p)
        assert str(e.value) == "ValueError: odd pixels"
    finally:
        p.close()


def test_worker_processes_ignore_ctrl_c_and_a_killed_one_is_named(tmp_path):
    p = _with_workers(tmp_path, batch_size=100, processes=2)
    try:
        next(p)  # chunks of 3 batches: 12 more batches are prepared or queued
        for pid in _worker_pids(p):
            os.kill(pid, signal.SIGINT)
        for _ in range(60):  # far more than were prepared before the signal
            next(p)
        # torch's loader learns of the death from SIGCHLD, whose handler raises wherever the
        # process is (the command line says that in one line too); or a read finds it.
        victim = _worker_pids(p)[0]
        # what it may leave: a chunk in shared memory that it had not yet handed over
        leftover = pathlib.Path(f"/dev/shm/torch_{victim}_1234_5")
        if leftover.parent.is_dir():
            leftover.write_bytes(b"chunk")
        with pytest.raises((RapaError, RuntimeError)) as e:
            os.kill(victim, signal.SIGKILL)
            for _ in range(100):
                next(p)
        if isinstance(e.value, RapaError):
            assert str(e.value).startswith(f"database {tmp_path / 'db'}: a worker process "
                                           f"preparing batches stopped (")
            assert not str(e.value).endswith("stopped ()")
        else:
            assert is_worker_death(e.value)
            assert worker_death_line(e.value).startswith(f"database {tmp_path / 'db'}: ")
        assert "\n" not in worker_stopped(e.value) and "\n" not in str(e.value)
    finally:
        p.close()
    assert not leftover.exists()  # removed with the dead worker


def test_a_ctrl_c_that_reaches_a_worker_before_it_can_ignore_it_is_not_fatal(tmp_path,
                                                                            monkeypatch):
    """Workers are born with SIGINT and SIGTERM blocked, so one sent while a worker starts
    (before its init) waits and is then ignored; the training process blocks them only for
    the moment of the fork."""
    import rapa.data.prefetch as prefetch
    init = prefetch._worker_init

    def slow_init(worker_id):
        time.sleep(0.5)  # the signals come now
        init(worker_id)
    monkeypatch.setattr(prefetch, "_worker_init", slow_init)
    images, labels = random_images(12, h=8, w=8)
    src = LmdbSource(write_lmdb(tmp_path / "db", images, labels))
    p = Prefetcher(src, transformer(""), batch_size=4, seed=1, processes=2)
    one = Prefetcher(src, transformer(""), batch_size=4, seed=1)
    try:
        p._chunks = p._start()
        assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & {signal.SIGINT, signal.SIGTERM}
        for pid in _worker_pids(p):
            os.kill(pid, signal.SIGINT)
            os.kill(pid, signal.SIGTERM)
        for step in range(5):
            assert torch.equal(next(p)[0], next(one)[0]), step
        assert all(_alive(pid) for pid in _worker_pids(p))
    finally:
        p.close(), one.close()


def test_a_key_that_is_not_text_is_named_all_the_same(tmp_path):
    images, labels = random_images(2, h=8, w=8, classes=3)
    with LmdbWriter(tmp_path / "db") as w:
        w.put(b"00000", encode_raw(images[0], 1))
        w.put(b"\xff1", encode_raw(images[1], 7))
    p = Prefetcher(LmdbSource(tmp_path / "db"), transformer(""), batch_size=2, seed=1)
    p.limit_labels(3, None, "the loss")
    with pytest.raises(RapaError, match="key '\ufffd1': label 7, but the loss takes labels"):
        p.batch(0)


def test_a_worker_s_death_is_said_in_one_line():
    death = RuntimeError("DataLoader worker (pid 5) is killed by signal: Killed.\nmore")
    assert is_worker_death(death)
    assert worker_stopped(death) == ("a worker process preparing batches stopped (DataLoader "
                                     "worker (pid 5) is killed by signal: Killed.)")
    assert not is_worker_death(RuntimeError("CUDA out of memory"))
    assert not is_worker_death(ValueError("DataLoader worker"))
    # what the loader's queue raises when a worker dies mid-message: no words at all
    assert worker_stopped(EOFError()) == "a worker process preparing batches stopped (EOFError)"


def test_a_worker_s_uncaught_errors_are_one_line_or_none(capsys):
    """What multiprocessing's hand-over thread in a worker reports when the training process
    closes the connection (its loaders closing): nothing; anything else: one line."""
    from rapa.data.prefetch import _worker_excepthook
    _worker_excepthook(BrokenPipeError, BrokenPipeError(32, "Broken pipe"), None)
    _worker_excepthook(ConnectionResetError, ConnectionResetError(104, "reset"), None)
    assert capsys.readouterr().err == ""
    _worker_excepthook(ValueError, ValueError("bad\nmore"), None)
    assert capsys.readouterr().err == f"rapa: data worker process {os.getpid()}: ValueError: bad\n"


def test_an_error_s_first_line():
    assert first_line(RuntimeError("\n  gloo: peer closed  \nstack")) == "gloo: peer closed"
    assert first_line(ConnectionResetError()) == "ConnectionResetError"
    long = RuntimeError("word " * 40)
    assert first_line(long, limit=20) == "word word word ..."
    assert len(first_line(long, limit=20)) <= 20 and first_line(long) == ("word " * 40).strip()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"  # zombies have exited
    except FileNotFoundError:
        return False


def test_worker_processes_are_stopped_at_once_for_a_hard_exit(tmp_path):
    """What a second Ctrl-C does before it leaves: else the workers would live on for
    seconds, until they see their parent gone."""
    p = _with_workers(tmp_path, batch_size=4, processes=2)
    handler = signal.getsignal(signal.SIGCHLD)
    try:
        next(p)
        pids = _worker_pids(p)
        assert all(_alive(pid) for pid in pids)
        leftovers = [pathlib.Path(f"/dev/shm/torch_{pid}_99_1") for pid in pids]
        if leftovers[0].parent.is_dir():
            for f in leftovers:
                f.write_bytes(b"chunk")
        stop_worker_processes()
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL  # their deaths raise nowhere
        # reaped and gone from the process table when it returns, their shared memory too
        assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)
        assert not any(f.exists() for f in leftovers)
    finally:
        signal.signal(signal.SIGCHLD, handler)
        p.close()


def test_no_room_in_shared_memory_is_said_in_one_line(tmp_path, monkeypatch):
    """A container's /dev/shm is 64 MB unless told otherwise; a full one is named, with the
    ways out. (The workers are forked after the patch, so they have it too.)"""
    def full(self):
        raise RuntimeError("unable to write to file </torch_1_2_3>: No space left on device (28)"
                           "\nmore")
    monkeypatch.setattr(torch.Tensor, "share_memory_", full)
    images, labels = random_images(12, h=8, w=8)
    src = LmdbSource(write_lmdb(tmp_path / "db", images, labels))
    p = Prefetcher(src, transformer(""), batch_size=4, seed=1, processes=1)
    try:
        with pytest.raises(RapaError) as e:
            next(p)
        assert p.chunk_batches == 64  # batches of 4 images: 256 a chunk
        size = 64 * 4 * (3 * 8 * 8 * 4 + 8) / 2 ** 20  # float32 images, int64 labels
        assert str(e.value) == (
            f"database {tmp_path / 'db'}: no room for {size:.1f} MB of batches in shared memory "
            f"(/dev/shm) for the worker processes (unable to write to file </torch_1_2_3>: No "
            f"space left on device (28)); free some, give the container more (docker run "
            f"--shm-size), or read with data_param.threads instead of processes")
    finally:
        p.close()


def test_more_worker_processes_than_cores_start_without_torch_s_warning(tmp_path):
    images, labels = random_images(4, h=8, w=8)
    src = LmdbSource(write_lmdb(tmp_path / "db", images, labels))
    p = Prefetcher(src, transformer(""), batch_size=4, seed=1,
                   processes=len(os.sched_getaffinity(0)) + 1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            next(p)
            p.seek(0)
            next(p)  # the loader's restart
        assert [str(w.message) for w in caught] == []
    finally:
        p.close()


def test_a_slow_consumer_loses_no_batch_of_the_threads(tmp_path):
    """The threads wait (in turns of 0.1 s) for room in their queues; no batch is dropped."""
    images, labels = random_images(12, h=8, w=8)
    src = LmdbSource(write_lmdb(tmp_path / "db", images, labels))
    one = Prefetcher(src, transformer(""), batch_size=4, seed=1)
    many = Prefetcher(src, transformer(""), batch_size=4, seed=1, depth=2, threads=2)
    try:
        for step in range(4):
            time.sleep(0.25)
            assert torch.equal(next(many)[1], next(one)[1]), step
    finally:
        one.close(), many.close()


def test_a_source_sent_to_another_process_opens_its_own_environment(tmp_path):
    """What a spawned worker gets: the database's path and keys, and its own environment."""
    import pickle
    images, labels = random_images(5, h=8, w=8)
    src = LmdbSource(write_lmdb(tmp_path / "db", images, labels))
    copy = pickle.loads(pickle.dumps(src))
    got, got_labels = copy.read_many(3, 4)
    np.testing.assert_array_equal(got, images[[3, 4, 0, 1]])
    np.testing.assert_array_equal(got_labels, labels[[3, 4, 0, 1]])
    # and the whole of what a worker runs: the reader with its transform and label limits
    p = Prefetcher(src, transformer("mirror: true strong_augmentation { max_scale: 1.2 }",
                                    mean=np.ones((3, 8, 8), np.float32)), 2, seed=4)
    p.limit_labels(10, None, "the loss")
    reader = pickle.loads(pickle.dumps(p.reader))
    for index in range(3):
        assert all(torch.equal(a, b) for a, b in zip(reader(index, 4), p.batch(index)))
    assert reader.label_limits == [(10, None, "the loss")]


def test_the_data_layer_takes_its_processes_and_refuses_bad_ones(tmp_path, monkeypatch):
    from rapa.net import Net
    write_lmdb(tmp_path / "db", *random_images(8, h=6, w=6))
    monkeypatch.chdir(tmp_path)
    text = ('layer { name: "d" type: "Data" top: "x" data_param { source: "db" batch_size: 2 '
            '%s } }')
    net = Net(parse_text(text % "processes: 2", pb.NetParameter()), pb.TRAIN)
    assert net.layer("d").prefetcher.processes == 2
    assert net.read_data()["x"].shape == (2, 3, 6, 6)
    net.close()
    for bad, message in (("processes: 65", "data_param.processes must be in \\[0, 64\\], got 65"),
                         ("processes: 2 threads: 2", "give either data_param.threads or "
                                                     "data_param.processes, not both")):
        with pytest.raises(RapaError, match=f"layer 'd'.*{message}"):
            Net(parse_text(text % bad, pb.NetParameter()), pb.TRAIN)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("how", [{"threads": 2}, {"processes": 2}])
def test_batches_for_a_gpu_come_in_page_locked_memory_cuda(tmp_path, how):
    images, labels = random_images(12, h=8, w=8)
    src = LmdbSource(write_lmdb(tmp_path / "db", images, labels))
    t = transformer("mirror: true")
    plain, pinned = Prefetcher(src, t, 4, seed=1), Prefetcher(src, t, 4, seed=1, **how)
    pinned.set_pin_memory(True)
    try:
        for step in range(5):
            x, y = next(pinned)
            ref = next(plain)
            assert x.is_pinned() and y.is_pinned() and not ref[0].is_pinned()
            assert torch.equal(x, ref[0]) and torch.equal(y, ref[1]), step
    finally:
        plain.close(), pinned.close()
    from rapa.net import Net  # a net moved to the GPU asks its Data layers for it
    text = ('layer { name: "d" type: "Data" top: "x" data_param { source: "%s" batch_size: 2 '
            '} }' % (tmp_path / "db"))
    net = Net(parse_text(text, pb.NetParameter()), pb.TRAIN).to_device(torch.device("cuda"))
    assert net.layer("d").prefetcher.pin_memory and net.read_data()["x"].is_cuda
    net.close()


def test_first_line_skips_blank_lines_and_cuts_at_the_limit_exactly():
    # a line of blanks is no line
    assert first_line(RuntimeError("   \n\t\nreal cause\nmore")) == "real cause"
    # exactly `limit` characters: kept whole; one more: cut
    assert first_line(RuntimeError("aaaa bbbb cccc dd ee"), limit=20) == "aaaa bbbb cccc dd ee"
    assert first_line(RuntimeError("aaaa bbbb cccc dd eee"), limit=20) == "aaaa bbbb cccc ..."
    # the cut keeps every whole word that fits with " ..." ...
    assert first_line(RuntimeError("aaaa bbbb cccc d eeee"), limit=20) == "aaaa bbbb cccc d ..."
    # ... and never more than `limit` characters
    cut = first_line(RuntimeError("aaaa bbbb cccc dd eeee"), limit=20)
    assert cut == "aaaa bbbb cccc ..." and len(cut) <= 20


def test_first_line_without_blanks_stays_within_the_limit():
    assert first_line(RuntimeError("x" * 200), limit=120) == "x" * 116 + " ..."


def test_the_shared_memory_size_counts_images_and_labels_in_mib(monkeypatch):
    """The size named is that of both buffers, in MiB (2 ** 20 bytes)."""
    import types
    from rapa.data import prefetch

    def full(self):
        raise RuntimeError("No space left on device (28)")
    monkeypatch.setattr(torch.Tensor, "share_memory_", full)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())  # "in a worker"
    reader = types.SimpleNamespace(source=types.SimpleNamespace(path="db"))
    x = torch.zeros(2 ** 16)  # 2 batches of 256 KiB images: 0.5 MiB
    y = torch.zeros(2 ** 17, dtype=torch.int64)  # 2 batches of 1 MiB labels: 2 MiB
    with pytest.raises(RapaError) as e:
        prefetch._Chunks(reader)._buffers(2, x, y)
    assert "database db: no room for 2.5 MB of batches in shared memory" in str(e.value)


def test_a_worker_dead_when_the_loader_restarts_is_named(tmp_path):
    """A seek restarts the loader, whose workers must acknowledge it: a dead one shows
    there, and is said as a RapaError, as when a read finds it."""
    p = _with_workers(tmp_path, batch_size=4, processes=2)
    handler = signal.getsignal(signal.SIGCHLD)
    try:
        next(p)
        pid = p._loader._iterator._workers[0].pid
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the restart, not torch's handler, finds it
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 5
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.01)
        p.seek(0)
        with pytest.raises(RapaError, match=r"^database .*: a worker process preparing batches "
                                            r"stopped \(.+\)$"):  # torch's words, or a
            next(p)  # ConnectionResetError from its queue
        assert p._loader is None  # closed
    finally:
        p.close()
        signal.signal(signal.SIGCHLD, handler)


def test_a_worker_process_loader_closes_from_another_thread(tmp_path):
    """_sigchld_held off the main thread leaves the handler alone and does not fail."""
    p = _with_workers(tmp_path, batch_size=4, processes=1)
    handler = None
    errors = []
    try:
        next(p)
        handler = signal.getsignal(signal.SIGCHLD)

        def close():
            try:
                p.close()
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
        t = threading.Thread(target=close)
        t.start()
        t.join()
        assert errors == [] and p._loader is None
        assert signal.getsignal(signal.SIGCHLD) is handler
    finally:
        p.close()


def test_a_worker_s_batches_are_written_in_shared_memory(tmp_path, monkeypatch):
    """In a worker both buffers are in shared memory from the start, so
    handing them to the training process copies nothing more."""
    from rapa.data.prefetch import _Chunks
    images, labels = random_images(12, h=8, w=8)
    src = LmdbSource(write_lmdb(tmp_path / "db", images, labels))
    p = Prefetcher(src, transformer(""), batch_size=4, seed=1)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())  # "in a worker"
    x, y, error = _Chunks(p.reader)[(1, (0, 1))]
    assert error is None and x.shape[0] == y.shape[0] == 2
    assert x.is_shared() and y.is_shared()


def test_sigchld_is_held_at_its_default_and_restored_even_on_an_exception():
    """_sigchld_held sets SIGCHLD to SIG_DFL for its block and restores the
    previous handler however the block ends (a Ctrl-C inside a loader's shutdown)."""
    from rapa.data.prefetch import _sigchld_held

    def mine(*args):
        pass
    old = signal.signal(signal.SIGCHLD, mine)
    try:
        with pytest.raises(KeyboardInterrupt):
            with _sigchld_held():
                assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
                raise KeyboardInterrupt
        assert signal.getsignal(signal.SIGCHLD) is mine
    finally:
        signal.signal(signal.SIGCHLD, old)


@pytest.mark.parametrize("where", ["restart", "read"])
@pytest.mark.parametrize("error, said", [
    (EOFError(), "EOFError"),
    (ConnectionResetError(104, "Connection reset by peer"), "[Errno 104] Connection reset by peer"),
    (RuntimeError("DataLoader worker (pid(s) 5) exited unexpectedly "),
     "DataLoader worker (pid(s) 5) exited unexpectedly")])
def test_every_way_a_worker_stops_is_one_rapa_error_and_closes_the_loader(
        tmp_path, monkeypatch, where, error, said):
    """A death found while the loader restarts or by a read, as torch's RuntimeError, an
    EOFError or an OSError from its queue: one line, and the loader closed before it."""
    p = _with_workers(tmp_path, batch_size=4, processes=1)
    try:
        next(p)  # a real loader, with its worker
        loader = p._loader

        def start(self):
            if where == "restart":
                raise error

            def chunks():
                raise error
                yield
            return chunks()
        monkeypatch.setattr(Prefetcher, "_start", start)
        p.seek(0)
        with pytest.raises(RapaError) as e:
            next(p)
        assert str(e.value) == (f"database {tmp_path / 'db'}: a worker process preparing "
                                f"batches stopped ({said})")
        assert p._loader is None and p._chunks is None
        del loader
    finally:
        p.close()


def test_stop_worker_processes_removes_torch_s_handler_before_any_kill(monkeypatch):
    """Every child is killed with SIGCHLD already at SIG_DFL (not SIG_IGN, which would have
    the kernel reap them behind multiprocessing's back), then reaped."""
    import multiprocessing
    from rapa.data.prefetch import stop_worker_processes
    seen = []

    class Child:
        pid = -1  # no /dev/shm/torch_-1_* to remove

        def kill(self):
            seen.append(signal.getsignal(signal.SIGCHLD))

        def join(self, timeout=None):
            seen.append("join")

        def terminate(self):
            seen.append("terminate")
    monkeypatch.setattr(multiprocessing, "active_children", lambda: [Child(), Child()])

    def torch_s(*args):
        pass
    old = signal.signal(signal.SIGCHLD, torch_s)
    try:
        stop_worker_processes()
        assert seen == [signal.SIG_DFL, signal.SIG_DFL, "join", "join"]  # killed, then reaped
        assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGCHLD, old)


def test_the_loader_restarts_for_a_seek_only(tmp_path, monkeypatch):
    """A chunk's end reads on from the running loader (a restart would drop the chunks
    its workers have prepared)."""
    starts = []
    real = Prefetcher._start

    def counted(self):
        starts.append(self.next_index)
        return real(self)
    monkeypatch.setattr(Prefetcher, "_start", counted)
    p = _with_workers(tmp_path, batch_size=100, processes=1)
    assert p.chunk_batches == 3
    try:
        for _ in range(10):  # across three chunk ends
            next(p)
        assert starts == [0]
        p.seek(2)
        next(p)
        assert starts == [0, 2]
    finally:
        p.close()


@pytest.mark.parametrize("death", [True, False])
def test_the_command_line_forgets_worker_deaths_after_one_stopped_the_run(monkeypatch, capsys,
                                                                          death):
    """A worker's death is said in one line and torch's SIGCHLD handler goes
    (the other workers' exit raises no more); any other RuntimeError is left alone."""
    import argparse
    import types
    import rapa.cli as cli
    error = RuntimeError("DataLoader worker (pid 5) is killed by signal: Killed. " if death
                         else "CUDA error: an illegal memory access")

    def run(args):
        raise error
    monkeypatch.setattr(cli, "build_parser", lambda: types.SimpleNamespace(
        parse_args=lambda argv: argparse.Namespace(command="train", run=run,
                                                   parser=argparse.ArgumentParser())))

    def torch_s(*args):
        pass
    old = signal.signal(signal.SIGCHLD, torch_s)
    try:
        if death:
            assert cli.main([]) == 2
            assert capsys.readouterr().err == (
                "rapa train: error: a worker process preparing batches stopped (DataLoader "
                "worker (pid 5) is killed by signal: Killed.)\n")
            assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL
        else:
            with pytest.raises(RuntimeError, match="CUDA error"):
                cli.main([])
            assert signal.getsignal(signal.SIGCHLD) is torch_s
    finally:
        signal.signal(signal.SIGCHLD, old)


def test_a_worker_s_death_is_told_by_how_it_ended_and_its_database(tmp_path):
    """However torch noticed it (here as its SIGCHLD handler would say it, anywhere): the
    database of the loader whose worker is gone, and how the worker ended."""
    p = _with_workers(tmp_path, batch_size=4, processes=2)
    handler = signal.getsignal(signal.SIGCHLD)
    try:
        next(p)
        victim = _worker_pids(p)[0]
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # this test says it, not torch's handler
        noticed = RuntimeError(f"DataLoader worker (pid {victim}) is killed by signal: Killed. ")
        assert worker_death_line(noticed) == ("a worker process preparing batches stopped "
                                              f"(DataLoader worker (pid {victim}) is killed by "
                                              f"signal: Killed.)")  # nothing known dead yet
        os.kill(victim, signal.SIGKILL)
        deadline = time.time() + 5
        while not ended_abnormally(p._worker_processes()) and time.time() < deadline:
            time.sleep(0.01)
        assert worker_death_line(noticed) == (f"database {tmp_path / 'db'}: a worker process "
                                              f"preparing batches stopped (pid {victim} killed "
                                              f"by SIGKILL)")
    finally:
        p.close()
        signal.signal(signal.SIGCHLD, handler)
    assert worker_death_line(noticed).startswith("a worker process")  # closed: not looked up


def test_how_a_worker_ended_is_said_for_signals_and_exit_statuses():
    from rapa.data.prefetch import _stopped_line

    class Ended:
        def __init__(self, pid, exitcode):
            self.pid, self.exitcode = pid, exitcode
    workers = [Ended(1, None), Ended(2, 0), Ended(3, -9), Ended(4, 3), Ended(5, -200)]
    assert _stopped_line("EOFError", workers) == (
        "a worker process preparing batches stopped (pid 3 killed by SIGKILL, pid 4 exited "
        "with status 3, pid 5 killed by signal 200)")
    assert _stopped_line("EOFError", workers[:2]) == ("a worker process preparing batches "
                                                      "stopped (EOFError)")
