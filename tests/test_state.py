"""sigrl/state.py on its own: the saved training state (swap via state.tmp / state.old,
the COMPLETE marker, the fallback after a crash between the renames, a damaged state),
Progress (sessions, best epoch, history) and the files metrics.csv / eval.json."""
import csv
import json

import pytest
import torch
from accelerate import Accelerator

from sigrl.errors import CheckpointError
from sigrl.state import (Progress, has_training_state, load_training_state, save_training_state, write_eval_json,
                         write_metrics_csv)


@pytest.fixture()
def acc_and_model():
    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    progress = Progress()
    acc.register_for_checkpointing(progress)
    model = acc.prepare(model)
    return acc, model, progress


def _set(model, value):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_save_swaps_in_a_complete_state_and_load_restores_it(tmp_path, acc_and_model):
    acc, model, progress = acc_and_model
    _set(model, 1.0)
    progress.epoch, progress.step = 3, 17
    save_training_state(acc, tmp_path)
    assert (tmp_path / "state" / "COMPLETE").read_text() == "ok\n"
    assert not (tmp_path / "state.tmp").exists() and not (tmp_path / "state.old").exists()
    assert has_training_state(tmp_path)
    _set(model, 2.0)  # a second save replaces the first; nothing else is left behind
    progress.epoch = 4
    save_training_state(acc, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    _set(model, 0.0)
    progress.epoch = 0
    assert load_training_state(acc, tmp_path) is True
    assert all(bool((p == 2.0).all()) for p in model.parameters())
    assert progress.epoch == 4 and progress.step == 17


def test_a_crash_between_the_renames_resumes_from_state_old(tmp_path, acc_and_model, capsys):
    acc, model, progress = acc_and_model
    _set(model, 5.0)
    save_training_state(acc, tmp_path)
    (tmp_path / "state").rename(tmp_path / "state.old")  # killed after 'state -> state.old'
    (tmp_path / "state.tmp").mkdir()  # and a half-written new one without COMPLETE
    _set(model, 0.0)
    assert load_training_state(acc, tmp_path) is True
    assert all(bool((p == 5.0).all()) for p in model.parameters())
    save_training_state(acc, tmp_path)  # the next save cleans up both leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_a_stale_state_old_is_removed_when_state_is_complete(tmp_path, acc_and_model):
    acc, model, _ = acc_and_model
    save_training_state(acc, tmp_path)
    (tmp_path / "state.old").mkdir()
    (tmp_path / "state.old" / "junk").write_text("x")
    save_training_state(acc, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_no_state_says_so_and_returns_false(tmp_path, acc_and_model, capsys):
    acc, _, _ = acc_and_model
    (tmp_path / "state").mkdir()  # a folder without COMPLETE is not a state
    assert load_training_state(acc, tmp_path) is False
    assert f"no saved state in {tmp_path}; starting from epoch 1" in capsys.readouterr().err


def test_a_damaged_state_names_itself_and_the_fix(tmp_path, acc_and_model):
    acc, _, _ = acc_and_model
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "COMPLETE").write_text("ok\n")
    with pytest.raises(CheckpointError, match=r"state: cannot restore the training state .*delete it to start over"):
        load_training_state(acc, tmp_path)


def test_progress_sessions_best_epoch_and_round_trip():
    p = Progress()
    assert (p.epoch, p.step, p.session, p.history, p.best, p.best_epoch, p.targets) == (0, 0, 1, [], None, None, None)
    assert p.best_row() == {}
    assert p.record({"epoch": 1, "val/mAP": 0.3}, "val/mAP") is True
    assert p.record({"epoch": 2}, "val/mAP") is False  # not evaluated this epoch
    assert p.record({"epoch": 3, "val/mAP": 0.2}, "val/mAP") is False
    assert p.record({"epoch": 4, "val/mAP": 0.3}, "val/mAP") is False  # a tie is not better
    assert (p.best, p.best_epoch, p.epoch) == (0.3, 1, 4)
    assert p.best_row()["epoch"] == 1 and all(r["time/session"] == 1 for r in p.history)
    q = Progress()
    q.load_state_dict(p.state_dict())
    assert q.session == 2 and q.history == p.history and (q.best, q.best_epoch, q.epoch) == (0.3, 1, 4)
    q.record({"epoch": 5, "val/mAP": 0.9}, "val/mAP")
    assert q.history[-1]["time/session"] == 2 and q.best_epoch == 5
    r = Progress()
    r.load_state_dict({"epoch": 2})  # a state saved before sessions were counted: it was session 1
    assert r.session == 2
    last = Progress()
    assert last.record({"epoch": 1}, None) is True and last.record({"epoch": 2}, None) is True
    assert last.best_epoch == 2 and last.best_row() == {"epoch": 2, "time/session": 1}
    orphan = Progress()
    orphan.history, orphan.best_epoch = [{"epoch": 7}], 3  # best epoch not in the history: the last row
    assert orphan.best_row() == {"epoch": 7}


def test_metrics_csv_has_every_column_and_six_significant_digits(tmp_path):
    write_metrics_csv(tmp_path / "m.csv", [{"epoch": 1, "loss": 0.123456789}, {"epoch": 2, "val/mAP": 2 / 3}])
    text = (tmp_path / "m.csv").read_text()
    assert "\r" not in text and text.splitlines()[0] == "epoch,loss,val/mAP"
    rows = list(csv.DictReader(text.splitlines()))
    assert rows == [{"epoch": "1", "loss": "0.123457", "val/mAP": ""}, {"epoch": "2", "loss": "", "val/mAP": "0.666667"}]


def test_eval_json_holds_the_best_epochs_test_metrics(tmp_path):
    best = {"epoch": 3, "loss": 0.5, "val/mAP": 0.4, "test/mAP": 0.25, "test/zsl/mAP": 0.2}
    write_eval_json(tmp_path, best, selected_by="val/mAP", empty_class="skip", zero_shot=True)
    got = json.loads((tmp_path / "eval.json").read_text())
    assert got == {"split": "test", "epoch": 3, "selected_by": "val/mAP", "empty_class": "skip", "zero_shot": True,
                   "metrics": {"mAP": 0.25, "zsl/mAP": 0.2}}
    write_eval_json(tmp_path, best, selected_by=None, empty_class="zero", zero_shot=False)
    got = json.loads((tmp_path / "eval.json").read_text())
    assert got["selected_by"] == "last epoch" and got["zero_shot"] is False and got["empty_class"] == "zero"


def test_progress_round_trip_keeps_the_session_count_and_recovered_labels():
    p = Progress()
    p.session, p.targets = 3, torch.tensor([[1, -1], [0, 1]], dtype=torch.int8)
    q = Progress()
    q.load_state_dict(p.state_dict())
    assert q.session == 4 and torch.equal(q.targets, p.targets)
    assert set(p.state_dict()) == {"epoch", "step", "session", "history", "best", "best_epoch", "targets"}
