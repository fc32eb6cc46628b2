"""The ablation's bookkeeping (benchmarks/ablation.py): paired differences, spread, the winner."""

import numpy as np
import pytest

from benchmarks.ablation import render, summarise


def _row(psnr):
    return {"psnr": psnr, "ssim": psnr / 40.0, "seconds": 10.0, "run": "r"}


RESULTS = {
    "output": {"0": _row(29.0), "1": _row(28.6), "2": _row(28.8)},
    "scratch": {"0": _row(26.6), "1": _row(28.4), "2": _row(27.5)},
    "assistant": {"0": _row(29.1), "1": _row(29.0), "2": _row(29.0)},
    "features": {"0": _row(30.0)},                      # one seed only: never the winner
}


def test_differences_are_paired_by_seed_with_sample_spread():
    summary = summarise(RESULTS)
    paired = np.array([29.1 - 29.0, 29.0 - 28.6, 29.0 - 28.8])
    assert summary["assistant"]["minus_output_mean"] == pytest.approx(paired.mean())
    assert summary["assistant"]["minus_output_std"] == pytest.approx(paired.std(ddof=1))
    assert summary["assistant"]["minus_scratch_mean"] == pytest.approx(np.mean([2.5, 0.6, 1.5]))
    assert summary["assistant"]["psnr_std"] == pytest.approx(np.std([29.1, 29.0, 29.0], ddof=1))
    assert summary["features"]["minus_output_seeds"] == 1 and summary["features"]["psnr_std"] == 0.0
    assert "minus_output_mean" not in summary["output"]


def test_the_winner_is_measured_on_every_seed():
    payload = {"summary": summarise(RESULTS), "results": RESULTS, "seeds": [0, 1, 2], "steps": 1000,
               "quick": False, "wall_s": 60.0, "notes": ["a note"],
               "machine": {"date_utc": "today", "cpu_model": "cpu", "cores_usable": 2},
               "variants": {name: name for name in RESULTS}}
    text = render(payload)
    assert "**Winner: `assistant`**" in text and "- a note" in text
    assert "| `features` | 30.000 / 0.7500 | - | - |" in text


def test_a_gain_within_one_standard_error_does_not_change_the_default():
    from benchmarks.ablation import winner_line

    noisy = {**RESULTS, "assistant": {"0": _row(28.6), "1": _row(28.7), "2": _row(29.4)}}   # paired: -0.4, +0.1, +0.6
    line = winner_line(summarise(noisy), [0, 1, 2])
    assert line.startswith("**Winner: `output`** (output-only), 28.800 dB, +1.300 ± 1.100 dB over the from-scratch")
    assert "`assistant` has a higher mean (+0.100 ± 0.500 dB paired)" in line and "within one standard error" in line
    assert winner_line(summarise(RESULTS), [0, 1, 2]).startswith("**Winner: `assistant`**, 29.033 dB: +0.233 ± 0.153")
    assert winner_line(summarise({"scratch": RESULTS["scratch"]}), [0, 1, 2]).startswith("No winner yet")


def test_ssim_differences_are_paired_too():
    summary = summarise(RESULTS)
    paired = np.array([29.1 - 29.0, 29.0 - 28.6, 29.0 - 28.8]) / 40.0
    assert summary["assistant"]["ssim_minus_output_mean"] == pytest.approx(paired.mean())
    assert summary["assistant"]["ssim_minus_output_std"] == pytest.approx(paired.std(ddof=1))
    assert "ssim_minus_output_mean" not in summary["output"]
