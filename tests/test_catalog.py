import pytest
import yaml

from rifml.catalog import load_catalog
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


def test_literature_cutoffs_are_reference_band_tops(catalog):
    # Kwak-Kim 2003 cut-offs and Ledee's uNK band, as domain.md states them.
    assert catalog.by_name["pb_th1_th2_ifng_il4"].reference_band[1] == 10.3
    assert catalog.by_name["pb_th1_th2_tnfa_il10"].reference_band[1] == 30.6
    assert catalog.by_name["em_unk_cd56_pct"].reference_band == (1.2, 13.9)


def test_every_marker_has_compartment_unit_and_kind(catalog):
    for marker in catalog.markers:
        assert marker.compartment in {"blood", "endometrium"}
        assert marker.unit
        if marker.kind == "percent":
            assert marker.valid_range == (0, 100)
    assert {c.name for c in catalog.context} == {"lab_id", "sample_date", "age_years", "failed_transfers", "cycle_day_lh"}


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
