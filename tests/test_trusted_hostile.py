"""`train --trusted` against a hostile user: files edited mid-run, files that drop everything, files
that are not files, cells that are not cells."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fercure import decisions as dec
from fercure.errors import WorkspaceError
from fercure.stages.train import run_train
from fercure.train.config import TrainConfig

from test_train_stage import CLASSES, _Crash, _CrashAfter, cfg, make_workspace


def _ids(ws):
    m = pd.read_parquet(ws.manifest)
    return m["sample_id"].tolist(), m["label"].tolist()


def test_resume_refuses_a_trusted_file_edited_since_the_run_started(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    ids, labels = _ids(ws)
    f = tmp_path / "decisions.csv"
    f.write_text(f"sample_id,action,label\n{ids[5]},drop,\n", encoding="utf-8")
    with pytest.raises(_Crash):
        run_train(ws, cfg(epochs=2, trusted=[str(f)]), reporter=_CrashAfter(1))
    # a keep row leaves the trained data as it was but changes which samples count as reviewed
    f.write_text(f"sample_id,action,label\n{ids[5]},drop,\n{ids[6]},keep,\n", encoding="utf-8")
    with pytest.raises(WorkspaceError, match=f"--trusted file {f} changed since run .* started"):
        run_train(ws, TrainConfig(), resume=True)
    f.write_text(f"sample_id,action,label\n{ids[5]},drop,\n", encoding="utf-8")  # put back: it resumes
    assert run_train(ws, TrainConfig(), resume=True).reviewed == 1


def test_resume_refuses_a_new_trusted_file_instead_of_ignoring_it(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    ids, _ = _ids(ws)
    with pytest.raises(_Crash):
        run_train(ws, cfg(epochs=2), reporter=_CrashAfter(1))
    new = tmp_path / "new.csv"
    new.write_text(f"sample_id,action,label\n{ids[5]},drop,\n", encoding="utf-8")
    with pytest.raises(WorkspaceError, match=r"started with \(none\); it cannot take .*new.csv"):
        run_train(ws, cfg(trusted=[str(new)]), resume=True)


def test_trusted_drops_that_leave_fewer_than_two_classes_are_refused(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    ids, labels = _ids(ws)
    everything = tmp_path / "all.csv"
    everything.write_text("sample_id,action,label\n" + "".join(f"{s},drop,\n" for s in ids), encoding="utf-8")
    with pytest.raises(WorkspaceError, match="leave no sample to train on"):
        run_train(ws, cfg(trusted=[str(everything)]))
    one_class = tmp_path / "one.csv"
    one_class.write_text("sample_id,action,label\n" + "".join(
        f"{s},drop,\n" for s, lab in zip(ids, labels) if lab != CLASSES[0]), encoding="utf-8")
    with pytest.raises(WorkspaceError, match=f"leave [0-9]+ {CLASSES[0]} to train on; training needs samples of at least two"):
        run_train(ws, cfg(trusted=[str(one_class)]))
    assert not ws.runs_dir.exists() or not any(ws.runs_dir.iterdir())  # no run folder started


@pytest.mark.skipif(not Path("/proc/kmsg").exists(), reason="no /proc/kmsg on this system")
def test_a_kernel_pseudo_file_is_refused_without_reading(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    with pytest.raises(WorkspaceError, match="/proc/kmsg is a kernel pseudo-file"):
        run_train(ws, cfg(trusted=["/proc/kmsg"]))


def test_a_duplicate_column_or_key_is_an_error(tmp_path):
    f = tmp_path / "twice.csv"
    f.write_text("sample_id,action,label,action\na,drop,,keep\n", encoding="utf-8")
    with pytest.raises(dec.DecisionsFileError, match="column 'action' more than once"):
        dec.read_trusted_file(f, limit=None, path_ids={})
    j = tmp_path / "twice.json"
    j.write_text('[{"sample_id": "a", "action": "drop", "action": "keep"}]', encoding="utf-8")
    with pytest.raises(dec.DecisionsFileError, match="key 'action' twice"):
        dec.read_decisions(j)


def test_messages_quote_user_cells_cut_and_escaped(tmp_path):
    f = tmp_path / "secret.csv"
    f.write_text("root:x:0:0:" + "y" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(dec.DecisionsFileError) as e:
        dec.read_trusted_file(f, limit=None, path_ids={})
    assert len(str(e.value)) < 600 and "5,011 characters" in str(e.value)
    huge = "z" * 900_000
    d = dec.parse([("row 2", {"sample_id": huge, "action": "drop"}),
                   ("row 3", {"sample_id": "a", "action": "relabel", "label": "x\u2028y"})],
                  file="f.csv", sample_ids=["a"], given=["happy"], suggested=[None], classes=["happy", "sad"])
    assert len(str(d.problems[0])) < 400 and "900,000 characters" in str(d.problems[0])
    assert "\u2028" not in str(d.problems[1]) and "x\\u2028y" in str(d.problems[1])


def test_a_foreign_trusted_table_in_a_run_is_named_not_a_keyerror(tmp_path):
    from fercure.errors import TableContractError
    from fercure.stages.audit import run_audit

    ws = make_workspace(tmp_path / "ws")
    s = run_train(ws, cfg(epochs=1))
    pd.DataFrame({"id": ["x"], "what": ["drop"]}).to_parquet(s.run_dir / "trusted.parquet")
    with pytest.raises(TableContractError, match=f"{s.run_dir / 'trusted.parquet'} is not a valid trusted table"):
        run_audit(ws, write_report=False)
