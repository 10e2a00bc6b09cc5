import pandas as pd
import pytest
import yaml

from rifml.catalog import Catalog, load_catalog
from rifml.config import config_dir
from rifml.errors import RifmlInputError

DOMAIN_COLUMNS = [
    # Every marker column named in domain.md: the catalog must cover all of them.
    "pb_nk_pct", "pb_nk_cytotox_pct", "pb_th1_th2_ifng_il4", "pb_th1_th2_tnfa_il10", "pb_treg_pct",
    "pb_th17_pct", "serum_ifng_pg_ml", "serum_tnfa_pg_ml", "serum_il6_pg_ml", "serum_il10_pg_ml",
    "kir_haplotype", "partner_hla_c2", "em_unk_cd56_pct", "em_il15_fn14_ratio", "em_il18_tweak_ratio",
    "em_cd68_pct", "em_foxp3_per_hpf", "em_cd138_per_10hpf",
]


def test_catalog_covers_domain_markers(catalog):
    assert catalog.marker_names == DOMAIN_COLUMNS


def test_literature_cutoffs_separate_within_from_above(catalog):
    # Kwak-Kim 2003 cut-offs (elevated at >= 10.3 and >= 30.6) and Ledee's uNK band, as domain.md states
    # them, decide where a value sits: read through band_position, as the report and the findings read them.
    from rifml.features import band_position

    cells = {"pb_th1_th2_ifng_il4": [10.2, 10.4], "pb_th1_th2_tnfa_il10": [30.5, 30.7], "em_unk_cd56_pct": [1.1, 14.0]}
    positions = band_position(pd.DataFrame(cells), catalog)
    assert positions["pb_th1_th2_ifng_il4"].tolist() == [0, 1]
    assert positions["pb_th1_th2_tnfa_il10"].tolist() == [0, 1]
    assert positions["em_unk_cd56_pct"].tolist() == [-1, 1]


def test_signals_point_only_where_the_marker_is_a_concern(catalog):
    # pydantic checks each field; this checks them against each other: a signal on the side the
    # catalog calls harmless would name subtypes from values the report draws grey.
    sides = {"high": {"above"}, "low": {"below"}, "both": {"above", "below"}, "none": set()}
    for marker in catalog.numeric_markers:
        assert set(marker.signals) <= sides[marker.concern], marker.name
    for compartment in catalog.compartments:  # subtypes need signalling markers in every compartment
        assert any(m.signals for m in catalog.compartment_markers(compartment) if m.is_numeric), compartment


def test_a_catalog_written_before_lab_column_and_interactions_still_loads(tmp_path):
    data = yaml.safe_load((config_dir() / "markers.yaml").read_text())
    del data["lab_column"], data["interactions"]
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(data))
    catalog = load_catalog(old)
    assert catalog.lab_column == "lab_id" and catalog.interactions == ()
    # and a catalog pickled inside a model trained before the fields existed: unpickled with the defaults
    current = load_catalog()
    state = current.__getstate__()
    state["__dict__"] = {k: v for k, v in state["__dict__"].items() if k not in ("lab_column", "interactions")}
    revived = Catalog.__new__(Catalog)
    revived.__setstate__(state)
    assert revived.lab_column == "lab_id" and revived.interactions == ()


def _write_variant(tmp_path, mutate):
    data = yaml.safe_load((config_dir() / "markers.yaml").read_text())
    mutate(data)
    path = tmp_path / "markers.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda d: d["markers"][0].update(kind="weight"), "markers.0.kind"),
        (lambda d: d["markers"][0].update(valid_range=[0, 150]), "valid_range must end"),
        (lambda d: d["markers"][1].update(name="pb_nk_pct"), "defined twice"),
        (lambda d: d["markers"][0].pop("reference_band"), "reference_band"),
        (lambda d: d.update(profiles=["balanced", "odd"]), "profiles"),
        (lambda d: d["markers"][0].update(surprise=1), "surprise"),
        (lambda d: d.update(lab_column="lab"), "lab_column 'lab' is not a context column"),
        (lambda d: d["interactions"][0]["when"].update(pb_nk_pct="AA"), "pb_nk_pct is not a categorical marker"),
        (lambda d: d["interactions"][0]["when"].update(kir_haplotype="CC"), "kir_haplotype has no category 'CC'"),
        (lambda d: d["interactions"][0].update(when={"kir_haplotype": "AA"}), "at least two markers"),
        (lambda d: d["interactions"][0].update(name="lab_id"), "has the name of a column"),
    ],
)
def test_malformed_catalog_is_a_clear_error(tmp_path, mutate, words):
    with pytest.raises(RifmlInputError, match="malformed") as info:
        load_catalog(_write_variant(tmp_path, mutate))
    assert words in str(info.value)


def test_unreadable_catalog(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("markers: [unclosed")
    with pytest.raises(RifmlInputError, match="not valid YAML"):
        load_catalog(bad)
    with pytest.raises(RifmlInputError, match="cannot read"):
        load_catalog(tmp_path / "absent.yaml")
