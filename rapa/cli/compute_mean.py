"""Compute the mean image of an LMDB into a Caffe mean file (Caffe's compute_image_mean)."""
from ..data.compute_mean import compute_mean
from .options import output_path


def add_arguments(p):
    p.add_argument("db", help="LMDB of Datum records")
    p.add_argument("out", type=output_path, help="output .binaryproto (its folder must exist)")


def run(args):
    mean = compute_mean(args.db, args.out)
    print(f"wrote {args.out}: shape {mean.shape}, mean value per channel "
          f"{[round(float(m), 2) for m in mean.mean((1, 2))]}")
    return 0
