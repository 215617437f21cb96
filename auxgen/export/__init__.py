"""Export a run's soft auxiliary labels as HDF5 or WebDataset shards, with a manifest (docs/format.md)."""

from auxgen.export.exporter import export_labels
from auxgen.export.format import FORMAT_NAME, FORMAT_VERSION, wds_key
from auxgen.export.labels import compute_soft_labels
from auxgen.export.manifest import read_manifest
from auxgen.export.views import draw_split_views, expand_views

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "compute_soft_labels", "draw_split_views", "expand_views",
           "export_labels", "read_manifest", "wds_key"]
