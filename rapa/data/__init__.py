"""Data: Caffe Datum records in LMDB, batch transforms, a background prefetcher, converters."""
