"""convert-cifar, convert-svhn, convert-imageset and compute-mean on data the tests make."""
import io
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib

import numpy as np
import pytest
from PIL import Image

from datasets import cifar_binary_archive, cifar_python_archive, random_images
from rapa.cli import main
from rapa.data.compute_mean import compute_mean
from rapa.data.lmdb_source import LmdbSource
from rapa.proto import pb
from rapa.prototxt import read_binary


def read_all(db):
    src = LmdbSource(db)
    with src.env.begin() as txn:
        keys = [k.decode() for k, _ in txn.cursor()]
    images, labels = src.read_many(0, len(src))
    return keys, images, labels


def test_convert_cifar10_python_archive(tmp_path, capsys):
    expected = cifar_python_archive(tmp_path / "cifar-10-python.tar.gz")
    assert main(["convert-cifar", str(tmp_path / "cifar-10-python.tar.gz"),
                 str(tmp_path / "out")]) == 0
    keys, images, labels = read_all(tmp_path / "out/cifar10_train_lmdb")
    assert keys[:3] == ["00000", "00001", "00002"] and len(keys) == 100
    batches = [expected[f"data_batch_{i}"] for i in range(1, 6)]
    np.testing.assert_array_equal(images.reshape(100, -1),
                                  np.concatenate([b[b"data"] for b in batches]))
    np.testing.assert_array_equal(labels, np.concatenate([b[b"labels"] for b in batches]))
    _, test_images, _ = read_all(tmp_path / "out/cifar10_test_lmdb")
    np.testing.assert_array_equal(test_images.reshape(20, -1), expected["test_batch"][b"data"])
    mean = read_binary(tmp_path / "out/mean.binaryproto", pb.BlobProto())
    assert tuple(mean.shape.dim) == (1, 3, 32, 32)
    np.testing.assert_allclose(np.asarray(mean.data).reshape(3, 32, 32),
                               images.mean(0), rtol=1e-5)


def test_convert_cifar10_binary_and_cifar100(tmp_path):
    expected = cifar_binary_archive(tmp_path / "bin.tar.gz")
    main(["convert-cifar", str(tmp_path / "bin.tar.gz"), str(tmp_path / "a")])
    _, images, labels = read_all(tmp_path / "a/cifar10_test_lmdb")
    np.testing.assert_array_equal(images.reshape(20, -1), expected["test_batch.bin"][:, 1:])
    np.testing.assert_array_equal(labels, expected["test_batch.bin"][:, 0])
    exp100 = cifar_python_archive(tmp_path / "c100.tar.gz", cifar100=True)
    for label in ("fine", "coarse"):
        main(["convert-cifar", str(tmp_path / "c100.tar.gz"), str(tmp_path / label),
              "--dataset", "cifar100", "--label", label])
        _, _, labels = read_all(tmp_path / label / "cifar100_train_lmdb")
        np.testing.assert_array_equal(labels, exp100["train"][f"{label}_labels".encode()])


def test_convert_cifar_class_folders(tmp_path):
    """train/<class>/*.png and test/<class>/*.png, in a tar.gz and in a folder."""
    images, labels = random_images(30, h=32, w=32, classes=3)
    names = ["cat", "airplane", "dog"]  # label order is the sorted order of the names
    with tarfile.open(tmp_path / "train.tar.gz", "w:gz") as tar:
        for i, (im, lab) in enumerate(zip(images, labels)):
            buf = io.BytesIO()
            Image.fromarray(im.transpose(1, 2, 0)).save(buf, format="PNG")
            info = tarfile.TarInfo(f"train/{names[lab]}/{i:04d}.png")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    for i in range(4):
        d = tmp_path / "folder/test" / names[i % 3]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i].transpose(1, 2, 0)).save(d / f"{i}.png")
    main(["convert-cifar", str(tmp_path / "train.tar.gz"), str(tmp_path / "folder"),
          str(tmp_path / "out")])
    _, got, got_labels = read_all(tmp_path / "out/cifar10_train_lmdb")
    sorted_label = {0: 1, 1: 0, 2: 2}  # cat -> 1, airplane -> 0, dog -> 2
    originals = {im.tobytes(): sorted_label[lab] for im, lab in zip(images, labels)}
    assert {im.tobytes(): lab for im, lab in zip(got, got_labels)} == originals
    assert not np.array_equal(got_labels, [sorted_label[x] for x in labels])  # shuffled
    assert len(read_all(tmp_path / "out/cifar10_test_lmdb")[0]) == 4


def test_convert_cifar_class_folders_that_do_not_fit_the_dataset(tmp_path, capsys):
    """More class folders than the dataset's classes, --label coarse (which class folders do
    not have): refused; fewer folders, or no training set (no mean file): said."""
    for split, n in (("train", 12), ("test", 3)):
        for c in range(n):
            d = tmp_path / "src" / split / f"c{c:02d}"
            d.mkdir(parents=True)
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(d / "0.png")
    src = str(tmp_path / "src")
    assert main(["convert-cifar", src, str(tmp_path / "a")]) == 2
    assert f"{src}: 12 class folders, but --dataset cifar10 has 10 classes" in \
        capsys.readouterr().err
    assert main(["convert-cifar", src, str(tmp_path / "b"), "--dataset", "cifar100", "--label",
                 "coarse"]) == 2
    assert "--label coarse: class folders name one label per image" in capsys.readouterr().err
    assert main(["convert-cifar", src, str(tmp_path / "c"), "--dataset", "cifar100"]) == 0
    assert "note: 12 class folders, fewer than cifar100's 100: the labels are 0 to 11" in \
        capsys.readouterr().out
    for c in range(10, 12):  # 10 folders: cifar10's own layout, no note
        shutil.rmtree(tmp_path / f"src/train/c{c:02d}")
    assert main(["convert-cifar", src, str(tmp_path / "e")]) == 0
    assert "note:" not in capsys.readouterr().out
    shutil.rmtree(tmp_path / "src/train")
    assert main(["convert-cifar", src, str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "no training set among the sources: no mean file" in out
    assert not (tmp_path / "d/mean.binaryproto").exists()


def test_convert_cifar_errors(tmp_path, capsys):
    assert main(["convert-cifar", str(tmp_path / "missing.tar.gz"), str(tmp_path / "o")]) == 2
    assert "missing.tar.gz: no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["convert-cifar", str(tmp_path / "empty"), str(tmp_path / "o")]) == 2
    assert "found neither the official cifar10 batches" in capsys.readouterr().err
    cifar_python_archive(tmp_path / "c.tar.gz")
    main(["convert-cifar", str(tmp_path / "c.tar.gz"), str(tmp_path / "o")])
    assert main(["convert-cifar", str(tmp_path / "c.tar.gz"), str(tmp_path / "o")]) == 2
    assert "already exists; remove it or pass --overwrite" in capsys.readouterr().err
    # The output is checked before the input is read (a damaged archive is not even opened).
    (tmp_path / "damaged.tar.gz").write_bytes((tmp_path / "c.tar.gz").read_bytes()[:500])
    assert main(["convert-cifar", str(tmp_path / "damaged.tar.gz"), str(tmp_path / "o")]) == 2
    assert "cifar10_train_lmdb already exists" in capsys.readouterr().err
    # --overwrite replaces the databases it wrote, and nothing else.
    assert main(["convert-cifar", str(tmp_path / "c.tar.gz"), str(tmp_path / "o"),
                 "--overwrite"]) == 0
    capsys.readouterr()
    precious = tmp_path / "p" / "cifar10_train_lmdb"
    precious.mkdir(parents=True)
    (precious / "notes.txt").write_text("the only copy")
    assert main(["convert-cifar", str(tmp_path / "c.tar.gz"), str(tmp_path / "p"),
                 "--overwrite"]) == 2
    assert (f"{precious}: --overwrite replaces only an LMDB folder (data.mdb, lock.mdb); this one "
            f"holds notes.txt") in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "the only copy"


def _mat_element(kind, data: bytes) -> bytes:
    if len(data) <= 4:  # MATLAB's small element format
        return struct.pack("<HH", kind, len(data)) + data.ljust(4, b"\0")
    return struct.pack("<II", kind, len(data)) + data + b"\0" * (-len(data) % 8)


def _mat_matrix(name: str, array: np.ndarray, mx_class: int, mi_type: int) -> bytes:
    body = (_mat_element(6, struct.pack("<II", mx_class, 0)) +
            _mat_element(5, np.asarray(array.shape, "<i4").tobytes()) +
            _mat_element(1, name.encode()) +
            _mat_element(mi_type, array.tobytes(order="F")))
    return struct.pack("<II", 14, len(body)) + body


def write_mat(path, compressed, **arrays):
    out = b"MATLAB 5.0 MAT-file, written by the rapa tests".ljust(116) + b"\0" * 8 + \
        struct.pack("<H", 0x0100) + b"IM"
    for name, (arr, mx_class, mi_type) in arrays.items():
        element = _mat_matrix(name, arr, mx_class, mi_type)
        if compressed:
            z = zlib.compress(element)
            element = struct.pack("<II", 15, len(z)) + z
        out += element
    path.write_bytes(out)


@pytest.mark.parametrize("compressed", [False, True])
def test_convert_svhn(tmp_path, compressed):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 3, 7), dtype=np.uint8)
    y = np.array([[1], [10], [3], [10], [5], [9], [2]], dtype=np.float64)
    write_mat(tmp_path / "train_32x32.mat", compressed, X=(x, 9, 2), y=(y, 6, 9))
    assert main(["convert-svhn", str(tmp_path / "train_32x32.mat"), str(tmp_path / "o")]) == 0
    _, images, labels = read_all(tmp_path / "o/svhn_train_lmdb")
    np.testing.assert_array_equal(images, x.transpose(3, 2, 0, 1))
    assert labels.tolist() == [1, 0, 3, 0, 5, 9, 2]


def test_convert_imageset_list_and_folders(tmp_path):
    images, labels = random_images(6, h=10, w=12)
    for i, im in enumerate(images):
        d = tmp_path / "root" / f"c{labels[i]}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im.transpose(1, 2, 0)).save(d / f"{i}.png")
    listing = "".join(f"c{labels[i]}/{i}.png {7 + i}\n" for i in range(6))
    (tmp_path / "list.txt").write_text(listing)
    main(["convert-imageset", str(tmp_path / "root"), str(tmp_path / "list.txt"),
          str(tmp_path / "db")])
    keys, got, got_labels = read_all(tmp_path / "db")
    assert keys[0] == f"00000000_c{labels[0]}/0.png"
    np.testing.assert_array_equal(got, images)
    assert got_labels.tolist() == list(range(7, 13))
    main(["convert-imageset", str(tmp_path / "root"), str(tmp_path / "db2"), "--encoded",
          "--shuffle"])
    _, got, got_labels = read_all(tmp_path / "db2")
    classes = sorted({f"c{x}" for x in labels})
    assert {im.tobytes(): lab for im, lab in zip(got, got_labels)} == \
        {im.tobytes(): classes.index(f"c{lab}") for im, lab in zip(images, labels)}
    main(["convert-imageset", str(tmp_path / "root"), str(tmp_path / "db3"), "--gray",
          "--resize-height", "5", "--resize-width", "4"])
    assert LmdbSource(tmp_path / "db3").shape == (1, 5, 4)


def test_convert_imageset_refuses_what_it_cannot_write(tmp_path, capsys):
    """Labels beyond a Datum's int32, a resize whose record passes protobuf's 2 GiB, and half
    a resize (Caffe ignores it silently): one line each, before any image is read."""
    (tmp_path / "root/c0").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "root/c0/a.png")
    (tmp_path / "list.txt").write_text("c0/a.png 5\nc0/a.png 2147483648\n")
    for extra, message in (
            ([str(tmp_path / "list.txt")], f"{tmp_path}/list.txt:2: label 2147483648 is "
                                           f"outside int32"),
            (["--resize-height", "30000", "--resize-width", "30000"],
             "--resize-height 30000 --resize-width 30000: a record holds at most 2^31 - 1 bytes"),
            (["--resize-height", "8"], "give both --resize-height and --resize-width"),
            (["--resize-width", "8"], "give both --resize-height and --resize-width")):
        code = main(["convert-imageset", str(tmp_path / "root"), *extra, str(tmp_path / "db")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "db").exists()


def test_compute_mean_cli(tmp_path, capsys):
    images, labels = random_images(9, h=4, w=4)
    from datasets import write_lmdb
    write_lmdb(tmp_path / "db", images, labels)
    assert main(["compute-mean", str(tmp_path / "db"), str(tmp_path / "m.binaryproto")]) == 0
    np.testing.assert_allclose(compute_mean(tmp_path / "db"), images.mean(0), rtol=1e-6)
    with pytest.raises(SystemExit):  # an output in a missing folder: refused before the work
        main(["compute-mean", str(tmp_path / "db"), str(tmp_path / "no/m.binaryproto")])
    assert "no/m.binaryproto: " in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_a_damaged_archive_is_named(tmp_path, cut):
    """A partly copied archive (cut short) is a one-line error naming it, for the official
    archives and for packed class folders alike."""
    whole = tmp_path / "cifar-10-python.tar.gz"
    cifar_python_archive(whole)
    data = whole.read_bytes()
    damaged = tmp_path / "part.tar.gz"
    damaged.write_bytes(data[:int(cut * len(data))])
    proc = subprocess.run([sys.executable, "-m", "rapa", "convert-cifar", str(damaged),
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{damaged}: the archive is damaged (" in proc.stderr
    assert proc.stderr.count("\n") == 1
