"""Self-contained HTML reports: one cohort page and one page per patient.

The data flow, one module per step::

    files.read_calls / read_panel_for_calls     the scored panels and their calls (edge)
      -> cohort.build_cohort                    explain every call, match findings (pure)
           (interventions: the findings and their treatments, from configs/interventions.yaml)
      -> figures.cohort_figures                 cohort figures as PNG, drawn by rifml.plots
         geometry                               marker axes and the waterfall in pixels (patient pages)
      -> render.render_index / render_patient_pages   jinja over rifml/templates
      -> files.write_report                     the folder, swapped in whole (edge)

:func:`generate_report` runs the whole chain. Patient ids go into the local report only,
never to MLflow.
"""

from rifml.report.cohort import CohortData, ModelCard, build_cohort, lab_drift, patient_file_names, patient_flags
from rifml.report.files import (
    REPORT_MARKER,
    ReportSummary,
    describe_model,
    generate_report,
    read_calls,
    read_panel_for_calls,
    read_reject_counts,
    write_report,
)
from rifml.report.geometry import BandAxis, MarkerBand, band_axis, format_value, marker_bands, signed, waterfall
from rifml.report.interventions import Finding, FindingHits, Interventions, OutOfBand, find_findings, load_interventions
from rifml.report.render import RESEARCH_USE, render_index, render_patient_pages

__all__ = [
    "RESEARCH_USE",
    "REPORT_MARKER",
    "BandAxis",
    "CohortData",
    "Finding",
    "FindingHits",
    "Interventions",
    "MarkerBand",
    "ModelCard",
    "OutOfBand",
    "ReportSummary",
    "band_axis",
    "build_cohort",
    "describe_model",
    "find_findings",
    "format_value",
    "generate_report",
    "lab_drift",
    "load_interventions",
    "marker_bands",
    "patient_file_names",
    "patient_flags",
    "read_calls",
    "read_panel_for_calls",
    "read_reject_counts",
    "render_index",
    "render_patient_pages",
    "signed",
    "waterfall",
    "write_report",
]
