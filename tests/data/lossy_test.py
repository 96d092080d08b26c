"""Issue 12 item 7: lossy-compressed slices are flagged in report.json and the study's records."""

from __future__ import annotations

import json

import grain
import numpy as np
import pydicom
from pydicom.uid import JPEG2000

from dinolg_jax.data import convert, manifest, records
from dinolg_jax.phantom import coca_release


def test_lossy_slice_flagged_in_report_manifest_and_records(tmp_path) -> None:
    root = tmp_path / "release"
    coca_release.make_release(root, n_gated=2, n_nongated=0, seed=2, size=32, slices=(4, 5))
    files = sorted((root / "Gated_release_final" / "patient" / "1").rglob("*.dcm"))
    with pydicom.config.disable_value_validation():
        ds = pydicom.dcmread(files[0])
        ds.compress(JPEG2000, j2k_cr=[10])  # lossy JPEG 2000 (1.2.840.10008.1.2.4.91)
        ds.save_as(files[0], enforce_file_format=True)
    report = convert.convert_release(root, tmp_path / "out", progress=False)
    rel = str(files[0].relative_to(root))
    assert report["lossy_compression"] == {
        "gated-0001": [
            {
                "path": rel,
                "reason": "lossy transfer syntax 'JPEG 2000 Image Compression' "
                "(1.2.840.10008.1.2.4.91)",
            }
        ]
    }
    assert report["counts"]["studies_lossy_compression"] == 1
    man = manifest.load(tmp_path / "out" / "manifest.json")
    studies = json.loads((tmp_path / "out" / "manifest.json").read_text())["studies"]
    assert studies["gated-0001"]["lossy_compression"] is True
    assert studies["gated-0000"]["lossy_compression"] is False
    flags = {}
    source = grain.sources.ArrayRecordDataSource(man.shard_paths("pretrain"))
    for i in range(len(source)):
        rec = records.decode(source[i], fields=["position_mm"])
        flags.setdefault(rec["study"], set()).add(rec["lossy_compression"])
        assert rec["position_mm"][2] == rec["z_mm"] and np.all(np.isfinite(rec["position_mm"]))
    assert flags == {"gated-0000": {False}, "gated-0001": {True}}
