"""Convert SVHN's .mat files (train_32x32.mat, test_32x32.mat, extra_32x32.mat) into LMDBs.

Writes OUT/svhn_<name>_lmdb per file, keys %05d; the label 10 (digit 0) becomes 0.
"""
from ..data.convert_svhn import convert_svhn


def add_arguments(p):
    p.add_argument("mat", nargs="+", help=".mat files")
    p.add_argument("out", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing databases")


def run(args):
    convert_svhn(args.mat, args.out, args.overwrite)
    return 0
