"""Series choice in a clinic's study folder: scout, contrast, thin and thick recons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fake_ct import make_ct, write_series
from pydicom.uid import SecondaryCaptureImageStorage

from dinolg_jax.data import dicom
from dinolg_jax.inference import series_choice

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
UID = "1.2.3.77."


def _study(root: Path, *, contrast_only: bool = False) -> None:
    """Series 1 scout, 2 contrast 3 mm (20 slices), 3 recon 1 mm (15), 4 recon 3 mm (6),
    5 a coronal reformat (8), plus a secondary capture (a dose screen)."""
    make_ct(root / "s1" / "a.dcm", z=0.0, series_uid=UID + "1", series_number=1,
            iop=CORONAL, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))  # fmt: skip
    write_series(root / "s2", [3.0 * k for k in range(20)], series_uid=UID + "2",
                 series_number=2, extra={"ContrastBolusAgent": "Iodine"})  # fmt: skip
    if not contrast_only:
        write_series(root / "s3", [1.0 * k for k in range(15)], series_uid=UID + "3",
                     series_number=3, thickness=1.0)  # fmt: skip
        write_series(root / "s4", [3.0 * k for k in range(6)], series_uid=UID + "4",
                     series_number=4, thickness=3.0)  # fmt: skip
    write_series(root / "s5", [2.0 * k for k in range(8)], series_uid=UID + "5",
                 series_number=5, iop=CORONAL, thickness=3.0)  # fmt: skip
    make_ct(root / "dose" / "d.dcm", z=0.0, series_uid=UID + "9", series_number=999,
            extra={"SOPClassUID": SecondaryCaptureImageStorage})  # fmt: skip


def test_the_3_mm_non_contrast_axial_series_is_chosen_with_its_reason(tmp_path: Path) -> None:
    _study(tmp_path / "study")
    vol = series_choice.read_chosen_series(tmp_path / "study")
    choice = vol.report
    assert choice.series_uid == UID + "4"
    assert vol.hu.shape[0] == 6
    assert np.allclose(vol.z_mm, [0, 3, 6, 9, 12, 15])
    assert vol.source.reference.series_uid == UID + "4"
    assert choice.reason == (
        "series 4 (6 slices, 3 mm, ORIGINAL/PRIMARY/AXIAL, no contrast agent): closest to "
        "3 mm of 2 non-contrast axial series; left out: series 1 scout, series 2 contrast, "
        "series 3 1 mm, series 5 not axial"
    )
    # Today's reader (the longest series) would have taken the contrast series.
    assert dicom.read_series(tmp_path / "study").hu.shape[0] == 20
    # The secondary capture is no candidate at all.
    assert sorted(s.number for s in choice.candidates) == [1, 2, 3, 4, 5]


def test_series_uid_forces_a_series_and_an_unknown_one_is_an_error(tmp_path: Path) -> None:
    _study(tmp_path / "study")
    vol = series_choice.read_chosen_series(tmp_path / "study", series_uid=UID + "3")
    assert vol.hu.shape[0] == 15 and vol.report.reason.endswith("forced by series_uid")
    with pytest.raises(series_choice.SeriesChoiceError, match=r"no series with .*\(5 found\)"):
        series_choice.read_chosen_series(tmp_path / "study", series_uid="1.2.3.404")


def test_contrast_only_study_takes_the_contrast_series_and_says_so(tmp_path: Path) -> None:
    _study(tmp_path / "study", contrast_only=True)
    choice = series_choice.read_chosen_series(tmp_path / "study").report
    assert choice.series_uid == UID + "2"
    assert "all 1 axial series have contrast" in choice.reason


def test_thickness_from_z_step_when_the_header_has_none_and_no_scorable_series(
    tmp_path: Path,
) -> None:
    write_series(tmp_path / "a", [2.5 * k for k in range(6)], series_uid=UID + "1",
                 series_number=1, thickness=None)  # fmt: skip
    write_series(tmp_path / "a2", [5.0 * k for k in range(6)], series_uid=UID + "2",
                 series_number=2, thickness=None, ipp_xy=(0.0, 0.0))  # fmt: skip
    (info1, info2) = sorted(series_choice.scan_series(sorted(tmp_path.rglob("*.dcm"))),
                            key=lambda s: s.number)  # fmt: skip
    assert (info1.thickness_mm, info2.thickness_mm) == (2.5, 5.0)
    assert series_choice.choose_series([info1, info2]).series_uid == UID + "1"  # |0.5| < |2|
    make_ct(tmp_path / "b" / "x.dcm", z=0.0, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    with pytest.raises(series_choice.SeriesChoiceError, match="no axial CT series to score"):
        series_choice.read_chosen_series(tmp_path / "b")
