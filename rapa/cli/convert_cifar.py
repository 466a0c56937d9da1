"""Convert CIFAR-10 or CIFAR-100 into LMDBs (Caffe's convert_cifar_data, keys %05d).

SOURCE is the official archive (python or binary format; packed or unpacked), or one or more
folders / .tar(.gz) archives holding train/<class>/*.jpg and test/<class>/*.jpg. Writes
OUT/<dataset>_train_lmdb, OUT/<dataset>_test_lmdb and OUT/mean.binaryproto.
"""
from ..data.convert_cifar import convert_cifar
from .options import seed


def add_arguments(p):
    p.add_argument("source", nargs="+", help="archive(s) or folder(s)")
    p.add_argument("out", help="output folder")
    p.add_argument("--dataset", default="cifar10", choices=("cifar10", "cifar100"))
    p.add_argument("--label", default="fine", choices=("fine", "coarse"),
                   help="CIFAR-100 label set (default fine)")
    p.add_argument("--seed", type=seed, default=0, help="shuffle seed for class-folder sources")
    p.add_argument("--overwrite", action="store_true", help="replace existing databases")


def run(args):
    convert_cifar(args.source, args.out, args.dataset, args.label, args.overwrite, args.seed)
    return 0
