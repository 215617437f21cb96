"""`auxgen report`: a static HTML page with figures showing what a run (and its generator) learned."""

from auxgen.report.builder import ReportResult, build_report

__all__ = ["ReportResult", "build_report"]
