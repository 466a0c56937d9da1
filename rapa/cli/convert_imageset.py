"""Convert image files into an LMDB (Caffe's convert_imageset).

  rapa convert-imageset ROOT LISTFILE DB   LISTFILE lines: "path/relative/to/ROOT label"
  rapa convert-imageset ROOT DB            ROOT's class folders, labels in sorted order
"""
from ..data.convert_imageset import convert_imageset
from .options import count, seed


def add_arguments(p):
    p.add_argument("root", help="folder the image paths are relative to")
    p.add_argument("paths", nargs="+", metavar="[LISTFILE] DB", help="list file (optional), DB")
    p.add_argument("--shuffle", action="store_true", help="shuffle the order (see --seed)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--gray", action="store_true", help="store one grey channel")
    p.add_argument("--resize-height", type=count(0), default=0)
    p.add_argument("--resize-width", type=count(0), default=0)
    p.add_argument("--encoded", action="store_true", help="store the files as they are")
    p.add_argument("--overwrite", action="store_true", help="replace an existing database")


def run(args):
    if len(args.paths) > 2:
        raise SystemExit("rapa convert-imageset: error: give ROOT [LISTFILE] DB")
    list_file, db = (args.paths if len(args.paths) == 2 else (None, args.paths[0]))
    convert_imageset(args.root, db, list_file, args.shuffle, args.gray, args.resize_height,
                     args.resize_width, args.encoded, args.overwrite, args.seed)
    return 0
