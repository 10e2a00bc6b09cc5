"""Treatments the literature discusses per finding (configs/interventions.yaml), and which patients show each finding.

Pure: matching takes band positions and calls, returns boolean arrays. The caveat of the
config is shown with every treatment the report lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, model_validator

from rifml.catalog import Catalog, Marker, Profile
from rifml.config import load_validated


class OutOfBand(BaseModel):
    """Markers picked by catalog fields, out of band on the side that signals ``signal``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    signal: Profile
    compartment: str | None = None
    axis: str | None = None
    kind: str | None = None

    def matches(self, marker: Marker) -> bool:
        wanted = {"compartment": self.compartment, "axis": self.axis, "kind": self.kind}
        return marker.is_numeric and all(v is None or getattr(marker, k) == v for k, v in wanted.items())


class Finding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str
    finding: str
    treatments: tuple[str, ...]
    profiles: tuple[Profile, ...]
    out_of_band: OutOfBand | None = None
    nk_hla_c_incompatibility: bool = False

    @model_validator(mode="after")
    def _has_condition(self) -> "Finding":
        if self.out_of_band is None and not self.nk_hla_c_incompatibility:
            raise ValueError(f"finding {self.key} needs out_of_band or nk_hla_c_incompatibility")
        return self


class Interventions(BaseModel):
    """Treatments the literature discusses per finding, and the caveat shown with them."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str
    caveat: str
    findings: tuple[Finding, ...]


def load_interventions(path: str | Path | None = None) -> Interventions:
    """Load configs/interventions.yaml (or ``path``), validated.

    Raises
    ------
    RifmlInputError
        When the file is missing or malformed.
    """
    return load_validated(Interventions, path, "interventions.yaml", "interventions config")


@dataclass
class FindingHits:
    """Which patients show a finding, and on what evidence.

    Attributes
    ----------
    finding : Finding
    evidence : list of str
        Column labels of ``hits`` (e.g. "pb_nk_pct above its band").
    hits : ndarray of bool, shape (n_patients, n_evidence)
    applies : ndarray of bool, shape (n_patients,)
        Evidence present and the call is one of the finding's profiles.
    """

    finding: Finding
    evidence: list[str]
    hits: np.ndarray
    applies: np.ndarray


def find_findings(
    positions: pd.DataFrame, called: np.ndarray, incompatible: np.ndarray, catalog: Catalog, interventions: Interventions
) -> list[FindingHits]:
    """Match every patient against the findings of the interventions config.

    Parameters
    ----------
    positions : DataFrame
        :func:`rifml.features.band_position` of the panel (-1 below, 0 within, +1 above, NaN missing).
    called : ndarray of str
        Called profile per patient.
    incompatible : ndarray of bool
        NK/HLA-C incompatibility per patient.
    catalog : Catalog
    interventions : Interventions

    Returns
    -------
    list of FindingHits, one per finding, in config order.
    """
    out = []
    for finding in interventions.findings:
        evidence, columns = [], []
        if finding.out_of_band is not None:
            for marker in filter(finding.out_of_band.matches, catalog.numeric_markers):
                for direction, profile in marker.signals.items():
                    if profile == finding.out_of_band.signal:
                        sign = 1.0 if direction == "above" else -1.0
                        evidence.append(f"{marker.name} {direction} its reference band")
                        columns.append((positions[marker.name] == sign).to_numpy())
        if finding.nk_hla_c_incompatibility:
            evidence.append("maternal KIR AA with a partner carrying HLA-C2 (NK/HLA-C incompatibility)")
            columns.append(np.asarray(incompatible, dtype=bool))
        hits = np.column_stack(columns) if columns else np.zeros((len(positions), 0), dtype=bool)
        applies = hits.any(axis=1) & np.isin(called, finding.profiles)
        out.append(FindingHits(finding, evidence, hits, applies))
    return out
