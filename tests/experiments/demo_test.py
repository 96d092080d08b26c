"""The demo's per-patient table: the line that says whether the gate lost a patient."""

from dinolg_jax.experiments.demo import gate_losses, patient_table


def _row(study, mode, true, pred, flagged=3):
    return {
        "study": study, "mode": mode, "error": None, "num_slices": 10, "num_flagged": flagged,
        "true_total": true, "pred_total": pred, "true_category": "low", "pred_category": "low",
    }  # fmt: skip


def test_gate_losses_name_only_patients_the_unet_alone_finds():
    rows = [
        _row("gated-0001", "unet_only", 120.3, 118.0),
        _row("gated-0001", "gated", 120.3, 0.0, flagged=0),  # lost by the gate
        _row("gated-0002", "unet_only", 50.0, 0.0),
        _row("gated-0002", "gated", 50.0, 0.0),  # the U-Net alone misses it too: not the gate
        _row("gated-0003", "unet_only", 0.0, 4.0),
        _row("gated-0003", "gated", 0.0, 0.0),  # no calcium: nothing to lose
        _row("gated-0004", "unet_only", 30.0, 28.0),
        _row("gated-0004", "gated", 30.0, 27.5),
    ]
    assert gate_losses(rows) == ["gated-0001"]
    assert "the gate lost 1 calcified patient(s) the U-Net alone finds (gated-0001)" in (
        patient_table(rows)
    )
    kept = [r for r in rows if r["study"] != "gated-0001"]
    assert "the gate lost no calcified patient" in patient_table(kept)


def test_the_table_says_when_the_gate_sends_nearly_every_slice():
    rows = [
        _row("gated-0001", "unet_only", 120.3, 118.0),
        _row("gated-0001", "gated", 120.3, 118.0, flagged=10),
        _row("gated-0002", "unet_only", 0.0, 0.0),
        _row("gated-0002", "gated", 0.0, 0.0, flagged=9),
    ]
    line = "the gate sent 19 of 20 slices to the U-Net"
    assert line in patient_table(rows)  # 95 % > 90 %
    rows[3] = _row("gated-0002", "gated", 0.0, 0.0, flagged=8)
    assert "the gate sent" not in patient_table(rows)  # 18 of 20: 90 %, not above
