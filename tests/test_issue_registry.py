"""Issues and threshold rules are registered objects. A new per-row issue is one class and one
registry line, and reaches the audit table, its contract, the stats, the reasons and the page; a new
rule carries its own words, so nothing else in fercure needs its name."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from fercure import audit as core
from fercure import schema
from fercure.audit import reviewed
from fercure.audit.rules import RULES, Flags, ThresholdRule, register_rule

CLASSES = ["happy", "sad"]

# A toy issue as a user would write it: one module, one class, registered on import.
TOY_ISSUE = textwrap.dedent('''
    import numpy as np
    from fercure.audit.issues import IssueColumns, RowIssue, register_issue

    @register_issue
    class TinyIssue(RowIssue):
        name = "tiny"
        title = "tiny image"
        quality = True
        about = "the original image is under 64 px on its short side"

        def columns(self, x):
            short = np.minimum(x.number("width"), x.number("height"))
            return IssueColumns({"is_tiny_issue": short < 64, "tiny_score": np.clip(short / 256, 0, 1)},
                                stats={"tiny_cut": 64})

        def reason(self, row, stats):
            return f"tiny: {row.values['tiny_score'] * 256:.0f} px < {stats['tiny_cut']}"
''')


def small_audit(n=40, seed=0):
    rng = np.random.default_rng(seed)
    given = rng.integers(0, 2, n)
    p1 = np.where(rng.random(n) < 0.2, 0.1, 0.9)
    probs = np.where(given[:, None] == np.arange(2), p1[:, None], 1 - p1[:, None])
    ids = [f"s{i}" for i in range(n)]
    man = pd.DataFrame({
        "sample_id": ids, "source_path": [f"d/{i}.png" for i in range(n)], "label": [CLASSES[g] for g in given],
        "split": "train", "face_status": "ok", "reason": "", "face_score": 0.9, "sharpness": 50.0,
        "duplicate_of": "", "store_index": np.arange(n), "width": 256, "height": 256,
    })
    man.loc[[4, 9], "width"] = [32, 48]
    preds = pd.DataFrame({"sample_id": ids, "given_label": man["label"]})
    for j, c in enumerate(CLASSES):
        preds[f"mean_p_{c}"] = probs[:, j]
    return man, preds


@pytest.fixture
def tiny_issue():
    namespace: dict = {}
    exec(compile(TOY_ISSUE, "toy_issue.py", "exec"), namespace)
    yield core.ISSUES["tiny"]
    del core.ISSUES["tiny"]


def test_bundled_issues_are_registered_in_table_order():
    assert list(core.ISSUES) == ["label", "ambiguous", "duplicate", "no_face", "blur", "unreadable", "dark",
                                 "bright", "low_contrast", "outlier"]
    man, preds = small_audit()
    table, stats = core.build_audit(man, preds, CLASSES)
    flag_columns = [c for c in table.columns if c.startswith("is_") and c.endswith("_issue")]
    assert flag_columns == [i.flag_column for i in core.ISSUES.values()]
    assert all(stats[i.stats_key] == int(table[i.flag_column].sum()) for i in core.ISSUES.values())


def test_a_new_issue_reaches_table_contract_stats_and_reasons(tiny_issue):
    man, preds = small_audit()
    table, stats = core.build_audit(man, preds, CLASSES)
    assert np.flatnonzero(table["is_tiny_issue"]).tolist() == [4, 9]
    assert table["tiny_score"].iloc[4] == pytest.approx(32 / 256)
    # after the face stage's issues, before the reason
    cols = list(table.columns)
    assert cols.index("is_low_contrast_issue") < cols.index("is_tiny_issue") < cols.index("reason")
    assert stats["n_tiny_issues"] == 2 and stats["tiny_cut"] == 64
    assert table["reason"].iloc[4].endswith("tiny: 32 px < 64") and "tiny" not in table["reason"].iloc[5]
    # the audit's contract takes the new columns as the issue family it declares
    schema.conform(table, schema.AUDIT, CLASSES)
    # a tiny image is an image problem: a reviewer's drop of it says nothing of its label
    assert {"s4", "s9"} <= reviewed.image_problem_ids(man)


def test_an_issue_column_outside_the_convention_is_refused(tiny_issue):
    man, preds = small_audit()
    table, _ = core.build_audit(man, preds, CLASSES)
    table["tiny_score"] = 3.0  # a score must lie in 0..1
    with pytest.raises(schema.ContractError, match="tiny_score"):
        schema.conform(table, schema.AUDIT, CLASSES)


def test_a_new_issue_reaches_the_page(tmp_path):
    """The issue's module is imported before the page is built (as its registry line does): its chip,
    its image-quality row and its measure appear on the page."""
    (tmp_path / "toy_issue.py").write_text(TOY_ISSUE, encoding="utf-8")
    (tmp_path / "toy_data.py").write_text(f"import numpy as np\nimport pandas as pd\nCLASSES = {CLASSES!r}\n"
                                          + inspect.getsource(small_audit), encoding="utf-8")
    script = textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import toy_issue  # noqa: F401  the registry line
        from fercure import audit as core
        from fercure.report import render_report
        from toy_data import CLASSES, small_audit
        man, preds = small_audit()
        table, stats = core.build_audit(man, preds, CLASSES)
        print(render_report(table, stats, CLASSES, manifest=man))
    ''')
    html = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    data = json.loads(re.search(r'id="fercure-data">(.*?)</script>', html, re.S).group(1))
    assert "tiny" in data["quality_flags"] and data["flag_text"]["tiny"] == "tiny image"
    bit = 1 << data["flags"].index("tiny")
    flagged = [i for i, f in zip(data["rows"]["id"], data["rows"]["flags"]) if f & bit]
    assert sorted(flagged) == ["s4", "s9"]
    assert "tiny image = the original image is under 64 px on its short side" in html


class _Lowest(ThresholdRule):
    """A toy rule: the lowest tenth of the label scores."""

    name = "lowest_tenth"
    summary = "the lowest tenth of the label scores"
    cut = "score"
    chart_note = "the tenth percentile of the score"

    def flag(self, s):
        cut = float(np.nanquantile(s.quality, 0.1))
        issue = np.isfinite(s.quality) & (s.quality <= cut)
        return Flags(issue, self.name, s.class_counts(issue), None, global_cut=cut)

    def reason(self, r):
        return f"label issue: label_score {r.score:.2f} is in the lowest tenth; {r.alternative()}"


@pytest.fixture
def lowest_rule():
    register_rule(_Lowest)
    yield
    del RULES["lowest_tenth"]


def test_a_new_rule_brings_its_own_reason_and_words(lowest_rule):
    from fercure.report import render_report

    man, preds = small_audit()
    table, stats = core.build_audit(man, preds, CLASSES, threshold_method="lowest_tenth")
    flagged = table["is_label_issue"].to_numpy(bool)
    assert stats["threshold_method_used"] == "lowest_tenth" and flagged.sum() >= 4
    assert all("is in the lowest tenth" in r for r in table.loc[flagged, "reason"])
    html = render_report(table, stats, CLASSES)
    assert "the lowest tenth of the label scores" in html and "rule: lowest_tenth — the tenth percentile" in html


def test_a_rule_without_a_reason_cannot_be_registered():
    class _NoReason(ThresholdRule):
        name = "no_reason"
        summary = cut = chart_note = ""

        def flag(self, s):
            raise AssertionError

    with pytest.raises(TypeError, match="reason"):
        register_rule(_NoReason)
    assert "no_reason" not in RULES


def test_a_rule_that_lacks_its_inputs_is_recorded_as_the_rule_that_decided():
    man, preds = small_audit()  # no retrain columns, no planted flips
    for asked in ("retrain", "planted"):
        _, stats = core.build_audit(man, preds, CLASSES, threshold_method=asked)
        assert (stats["threshold_method_used"], stats["threshold_method"]) == ("noise_rate", "noise_rate")
