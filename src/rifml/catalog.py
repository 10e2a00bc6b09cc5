"""The marker catalog (configs/markers.yaml): names, units, ranges, bands, directions.

Every marker list in rifml is read from here; no module spells marker names by hand.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from rifml.config import load_validated

Compartment = Literal["blood", "endometrium"]
# The compartments by name, for code that must single one out (a biopsy is the endometrium's).
BLOOD: Compartment = "blood"
ENDOMETRIUM: Compartment = "endometrium"
Kind = Literal["percent", "ratio", "concentration", "count", "categorical"]
Direction = Literal["above", "below"]
Profile = Literal["balanced", "hyperactive", "hypoactive", "mixed"]
# The profiles by name, for code that must single one out (the label set is the catalog's).
BALANCED: Profile = "balanced"
HYPERACTIVE: Profile = "hyperactive"
HYPOACTIVE: Profile = "hypoactive"
MIXED: Profile = "mixed"


def spelling_key(name: str) -> str:
    """How a column name is compared with the catalog's names and aliases.

    Case, spaces and punctuation do not count (``Patient ID`` = ``patient_id``), but
    ``+`` and ``%`` do: ``CD3+CD56+`` (NKT cells) must not read as ``CD3-CD56+`` (NK cells).
    """
    return re.sub(r"[^\w+%]|_", "", unicodedata.normalize("NFKC", name).casefold())


class _Versioned(BaseModel):
    """A catalog part that may be unpickled from a model trained before a field was added."""

    def __setstate__(self, state: dict) -> None:
        # Such a model's catalog simply had the default (no aliases, no extra units).
        defaults = {name: f.get_default() for name, f in type(self).model_fields.items() if not f.is_required()}
        state["__dict__"] = {**defaults, **state["__dict__"]}
        super().__setstate__(state)


class Flag(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    value: float
    flag: str


class Marker(_Versioned):
    """One measured marker column."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    compartment: Compartment
    kind: Kind
    axis: str = "none"
    unit: str
    valid_range: tuple[float, float | None] | None = None
    censorable: bool = False
    concern: Literal["high", "low", "both", "none"]
    reference_band: tuple[float, float] | None = None
    signals: dict[Direction, Profile] = {}
    transform: Literal["log", "none"] = "none"
    drifts: bool = False
    categories: dict[str, list[str]] | None = None
    flag_at_or_above: Flag | None = None
    aliases: tuple[str, ...] = ()
    units: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _kind_fits(self) -> "Marker":
        if self.kind == "categorical":
            if not self.categories:
                raise ValueError(f"categorical marker {self.name} needs categories")
        else:
            if self.valid_range is None or self.reference_band is None:
                raise ValueError(f"numeric marker {self.name} needs valid_range and reference_band")
            low, high = self.valid_range
            if high is not None and high < low:
                raise ValueError(f"marker {self.name}: valid_range max is below min")
            if self.kind == "percent" and (high is None or high > 100):
                raise ValueError(f"percent marker {self.name}: valid_range must end at or below 100")
            band_low, band_high = self.reference_band
            if band_high < band_low:
                raise ValueError(f"marker {self.name}: reference_band high is below low")
        return self

    @property
    def is_numeric(self) -> bool:
        return self.kind != "categorical"

    @cached_property
    def category_lookup(self) -> dict[str, str]:
        """Lower-cased spelling -> canonical category."""
        return {
            alias.strip().lower(): canonical
            for canonical, aliases in (self.categories or {}).items()
            for alias in [canonical, *aliases]
        }


class Interaction(_Versioned):
    """A feature that reads several categorical markers together (e.g. NK/HLA-C incompatibility).

    It is 1 when every marker in ``when`` shows its category, 0 when one shows another, and
    missing when one is missing; its SHAP credit is shared by those markers.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    when: dict[str, str]

    @field_validator("when")
    @classmethod
    def _two_or_more(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) < 2:
            raise ValueError("an interaction reads at least two markers")
        return value


class ContextColumn(_Versioned):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["text", "number"]
    description: str
    unit: str | None = None
    valid_range: tuple[float, float | None] | None = None
    aliases: tuple[str, ...] = ()
    units: tuple[str, ...] = ()


class Catalog(_Versioned):
    """The whole catalog, validated when loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    catalog_version: str
    id_column: str
    label_column: str
    profiles: tuple[Profile, ...]
    markers: tuple[Marker, ...]
    context: tuple[ContextColumn, ...]
    id_aliases: tuple[str, ...] = ()
    label_aliases: tuple[str, ...] = ()
    # The context column naming the lab that ran a panel (keys per-lab normalization); None: no
    # lab column. Catalogs written before this field keyed labs by lab_id, hence the default.
    lab_column: str | None = "lab_id"
    interactions: tuple[Interaction, ...] = ()

    @field_validator("profiles")
    @classmethod
    def _profiles_complete(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if sorted(value) != sorted(get_args(Profile)):
            raise ValueError(f"profiles must be exactly {', '.join(get_args(Profile))}")
        return value

    @model_validator(mode="after")
    def _names_unique(self) -> "Catalog":
        names = [self.id_column, self.label_column]
        names += [m.name for m in self.markers] + [c.name for c in self.context]
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise ValueError(f"column {name!r} is defined twice")
            seen.add(name)
        self.column_spellings  # raises on a spelling shared by two columns
        if self.lab_column is not None and self.lab_column not in {c.name for c in self.context}:
            raise ValueError(f"lab_column {self.lab_column!r} is not a context column")
        for interaction in self.interactions:
            if interaction.name in seen:
                raise ValueError(f"interaction {interaction.name!r} has the name of a column")
            for name, category in interaction.when.items():
                marker = self.by_name.get(name)
                if marker is None or marker.is_numeric:
                    raise ValueError(f"interaction {interaction.name}: {name} is not a categorical marker")
                if category not in marker.categories:
                    raise ValueError(f"interaction {interaction.name}: {name} has no category {category!r}")
        return self

    @cached_property
    def aliases(self) -> dict[str, tuple[str, ...]]:
        """Catalog column -> the other spellings lab exports use for it."""
        return {
            self.id_column: self.id_aliases,
            **{c.name: c.aliases for c in (*self.markers, *self.context)},
            self.label_column: self.label_aliases,
        }

    @cached_property
    def column_spellings(self) -> dict[str, str]:
        """:func:`spelling_key` of every name and alias -> its catalog column."""
        spellings: dict[str, str] = {}
        for column, aliases in self.aliases.items():
            for spelling in (column, *aliases):
                key = spelling_key(spelling)
                if not key:
                    raise ValueError(f"alias {spelling!r} of {column} has no letters or digits")
                if spellings.setdefault(key, column) != column:
                    raise ValueError(f"alias {spelling!r} would name both {spellings[key]} and {column}")
        return spellings

    @cached_property
    def by_name(self) -> dict[str, Marker]:
        return {m.name: m for m in self.markers}

    @property
    def marker_names(self) -> list[str]:
        return [m.name for m in self.markers]

    @property
    def numeric_markers(self) -> list[Marker]:
        return [m for m in self.markers if m.is_numeric]

    @property
    def categorical_markers(self) -> list[Marker]:
        return [m for m in self.markers if not m.is_numeric]

    def compartment_markers(self, compartment: Compartment) -> list[Marker]:
        return [m for m in self.markers if m.compartment == compartment]

    @property
    def compartments(self) -> list[str]:
        return list(dict.fromkeys(m.compartment for m in self.markers))

    @property
    def known_columns(self) -> list[str]:
        return [self.id_column, *self.marker_names, *(c.name for c in self.context), self.label_column]


@lru_cache(maxsize=8)
def _load_cached(path: str | None) -> Catalog:
    return load_validated(Catalog, path, "markers.yaml", "marker catalog")


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load and validate the marker catalog (default: configs/markers.yaml)."""
    return _load_cached(str(path) if path is not None else None)


def catalog_differences(first: Catalog, second: Catalog) -> list[str]:
    """Where two catalogs differ, one phrase per field: ``pb_nk_pct valid_range [0.0, 100.0] vs [0.0, 20.0]``."""
    a, b = first.model_dump(mode="json"), second.model_dump(mode="json")
    found = []
    for key in a:
        if key in ("markers", "context"):
            left, right = ({entry["name"]: entry for entry in side[key]} for side in (a, b))
            for name in [*left, *(n for n in right if n not in left)]:
                if name not in right or name not in left:
                    found.append(f"{name} {'only in the first' if name in left else 'only in the second'}")
                    continue
                found += [f"{name} {field} {left[name][field]} vs {right[name][field]}"
                          for field in left[name] if left[name][field] != right[name].get(field)]
        elif a[key] != b[key]:
            found.append(f"{key} {a[key]} vs {b[key]}")
    return found
