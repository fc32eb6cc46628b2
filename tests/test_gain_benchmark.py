"""benchmarks.distillation_gain's arithmetic: each arm against scratch, the bank control (a2), gap
closure and what the table shows, on made-up reports (the trainings themselves are the main job's)."""

import pytest

from benchmarks import distillation_gain as gain


def report(psnrs: dict, scratch: bool = False) -> dict:
    """A main job's report holding `psnrs` {method row: PSNR at sigma 25} on both held-out sets."""
    methods = {name: {"scores": {gain.SIGMA: {"psnr": value}}, "macs_512": 10 ** 9} for name, value in psnrs.items()}
    methods["teacher"]["macs_512"] = 11 * 10 ** 9
    history = {"distill": {"val_psnr": [25.0, 26.0, 27.0]}}
    timings = {"distill_seconds": 30.0, "teacher_cache_seconds": 6.0}
    if scratch:
        history["scratch"] = {"val_psnr": [25.5, 26.5]}
        timings["scratch_seconds"] = 20.0
    body = {"methods": methods, "images": ["x", "y"]}
    return {**body, "heldout2": body, "history": history, "timings": timings, "run": "r",
            "teacher_path": "t.keras", "config": {"student": {"family": "unet", "widths": [4], "blocks": 1}}}


def test_the_bank_control_separates_the_teacher_term_from_the_bank():
    ac = report({"teacher": 32.0, "student (distilled)": 26.0, "student (scratch)": 27.0}, scratch=True)
    a2 = report({"teacher": 32.0, "student (distilled)": 25.5})
    arms = {"a": {"report": ac, "method": "student (scratch)"}, "c": {"report": ac, "method": "student (distilled)"},
            "a2": {"report": a2, "method": "student (distilled)"}}
    summary = gain.summarise({0: arms, 1: arms}, "no inheritance here")
    row = summary["sets"]["heldout1"]["per_seed"][0]
    assert row["c_minus_a"] == pytest.approx(-1.0) and row["a2_minus_a"] == pytest.approx(-1.5)
    assert row["c_minus_a2"] == pytest.approx(0.5)              # the teacher's term helps on the same batches
    assert row["gap_closure_c"] == pytest.approx(-1.0 / 5.0)
    assert summary["sets"]["heldout2"]["above_scratch_on_every_seed"] == {"a2": False, "c": False}
    table = gain.render(summary, "python -m benchmarks.distillation_gain --jobs ac a2")
    assert "(a2) scratch on the teacher bank" in table and "| (c) - (a2) |" in table and "| +0.500 |" in table
    assert summary["time_to_scratch_final"][0]["c"]["epochs_to_reach"] == 3     # 27.0 >= scratch's last 26.5
