"""Export a run's soft auxiliary labels as HDF5, WebDataset shards or parquet, with a manifest (docs/format.md)."""

from auxgen.export.exporter import export_labels
from auxgen.export.format import FORMAT_NAME, FORMAT_VERSION, key_of_wds, wds_key
from auxgen.export.labels import compute_soft_labels
from auxgen.export.manifest import read_manifest
from auxgen.export.options import ExportOptions
from auxgen.export.read import Export, ExportSplit, manifest_path, read_export
from auxgen.export.views import draw_split_views, expand_views

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Export", "ExportOptions", "ExportSplit", "compute_soft_labels",
           "draw_split_views", "expand_views", "export_labels", "key_of_wds", "manifest_path", "read_export",
           "read_manifest", "wds_key"]
