"""The tables of README.md and the model cards are those their committed reports give
(benchmarks/render_tables.py renders them; rerun it after a report changes)."""

import json
import shutil

import pytest

from benchmarks import render_tables


@pytest.mark.parametrize("file", render_tables.FILES)
def test_committed_tables_agree_with_their_reports(file):
    text = (render_tables.ROOT / file).read_text()
    _, stale = render_tables.render_text(text)
    assert not stale, f"{file}: {stale} differ from their reports; run python -m benchmarks.render_tables"


def test_every_table_is_marked_somewhere():
    texts = "".join((render_tables.ROOT / file).read_text() for file in render_tables.FILES)
    for name in render_tables.TABLES:
        assert f"<!-- table:{name} -->" in texts and f"<!-- /table:{name} -->" in texts, name


def test_a_figure_edited_by_hand_or_a_changed_report_is_caught(tmp_path, monkeypatch):
    readme = (render_tables.ROOT / "README.md").read_text()
    section = readme[readme.index("<!-- table:speed-targets -->"):readme.index("<!-- /table:speed-targets -->")]
    assert "45.4 ms" in section                                  # the int8 latency at 512 px, from results.json
    assert render_tables.render_text(readme.replace(section, section.replace("45.4 ms", "43 ms")))[1] == \
        ["speed-targets"]
    outside = readme.replace("Why the two misses stay", "Why both misses stay")     # prose is not owned
    assert render_tables.render_text(outside)[1] == []

    copy = tmp_path / "repo"                                     # a report changes: its tables must follow
    for relative in (*render_tables.FILES, *{report for report, _ in render_tables.TABLES.values()},
                     *render_tables.EXTRA_REPORTS):
        (copy / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(render_tables.ROOT / relative, copy / relative)
    report = json.loads((copy / render_tables.TEACHER_CHOICE).read_text())
    report["methods"]["teacher"]["scores"]["25.0"]["psnr"] = 31.5
    (copy / render_tables.TEACHER_CHOICE).write_text(json.dumps(report))
    monkeypatch.setattr(render_tables, "ROOT", copy)
    assert render_tables.main(["--check"]) == 1
    assert render_tables.main([]) == 0 and render_tables.main(["--check"]) == 0
    assert "| 31.50 |" in (copy / "README.md").read_text()          # no longer the best: not bold either
