import json
import os

import pytest

from accounting import (
    BudgetExceededError,
    Composed,
    Ledger,
    LedgerError,
    LedgerWarning,
    Record,
    dpsgd_event,
    make_accountant,
)

ROUND = dpsgd_event(noise_multiplier=1.0, sampling_rate=0.02, steps=50)


def test_write_reload_replay_same_epsilon(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path, accountant="pld")
    for rnd in range(1, 4):
        for client in ("0", "1"):
            ledger.record(client, rnd, "train", ROUND)
    ledger.record("2", 1, "train", dpsgd_event(noise_multiplier=2.0, sampling_rate=0.1, steps=10))
    before = ledger.epsilons(delta=1e-5)

    again = Ledger(path, accountant="pld")
    assert [r.to_json() for r in again] == [r.to_json() for r in ledger]
    assert again.epsilons(delta=1e-5) == before
    # replay equals composing the client's events directly (an independent computation)
    direct = make_accountant("pld").compose(ROUND, count=3).epsilon(1e-5)
    assert before["0"] == pytest.approx(direct, rel=1e-9)
    assert again.max_epsilon(delta=1e-5) == max(before.values())
    assert again.clients == ["0", "1", "2"]


@pytest.fixture
def fsyncs(monkeypatch) -> list[int]:
    """The file descriptors os.fsync is called on (it still syncs)."""
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    return calls


def test_one_json_line_per_release_and_fsync(tmp_path, fsyncs):
    calls = fsyncs
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path)
    ledger.record("a", 0, "init", ROUND)
    ledger.record("a", 1, "train", ROUND)
    # one fsync per record, plus one of the directory when the file is created
    assert len(calls) == 3
    lines = path.read_text().splitlines()
    assert [set(json.loads(x)) for x in lines] == [{"client", "round", "scope", "event"}] * 2


def test_record_digest_pins_content(tmp_path):
    ledger = Ledger(tmp_path / "l.jsonl")
    assert ledger.digest() == ""
    ledger.record("a", 1, "train", ROUND)
    d1 = ledger.digest()
    ledger.record("a", 2, "train", ROUND)
    assert ledger.digest(1) == d1 != ledger.digest()
    assert Ledger(tmp_path / "l.jsonl").digest() == ledger.digest()  # stable across loads
    other = Ledger(tmp_path / "m.jsonl")
    other.record("a", 1, "init", ROUND)  # same event, other scope: another digest
    assert other.digest() != d1


def test_budget_check_refuses_the_crossing_step_and_allows_the_one_before(tmp_path):
    acc = lambda n: make_accountant("rdp").compose(ROUND, count=n).epsilon(1e-5)  # noqa: E731
    budget = (acc(5) + acc(6)) / 2  # 5 rounds fit, the 6th would cross
    ledger = Ledger(tmp_path / "l.jsonl", accountant="rdp")
    for rnd in range(1, 6):
        after = ledger.spend("c", rnd, "train", ROUND, budget=budget, delta=1e-5)
        assert after <= budget
    # spend returns an upper bound that decided (RDP when that suffices), never below the ε
    # the ledger reports, which is the tight one
    assert ledger.epsilon("c", delta=1e-5) == pytest.approx(acc(5))
    assert acc(5) - 1e-12 <= after <= budget
    with pytest.raises(BudgetExceededError) as info:
        ledger.spend("c", 6, "train", ROUND, budget=budget, delta=1e-5)
    err = info.value
    assert err.client == "c" and err.budget == budget
    assert err.current_epsilon == pytest.approx(acc(5))
    assert err.planned_epsilon == pytest.approx(acc(6))
    assert "'c'" in str(err) and f"{budget:g}" in str(err)
    assert len(ledger) == 5  # the refused release was not recorded
    # another client's budget is separate
    ledger.spend("d", 1, "train", ROUND, budget=budget, delta=1e-5)


def test_truncated_last_line_is_reported_not_counted_and_repaired(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path, accountant="rdp")
    ledger.record("0", 1, "train", ROUND)
    full = path.read_text()
    # a crash mid-write of the second record
    path.write_text(full + full[: len(full) // 2])
    with pytest.warns(LedgerWarning, match="line 2 is truncated"):
        reloaded = Ledger(path, accountant="rdp")
    assert reloaded.truncated_line == 2 and len(reloaded) == 1
    eps1 = reloaded.epsilon("0", delta=1e-5)
    # appending repairs the fragment with a marker; the file is never rewritten
    reloaded.record("0", 2, "train", ROUND)
    text = path.read_text()
    assert text.startswith(full + full[: len(full) // 2])
    third = Ledger(path, accountant="rdp")
    assert third.truncated_line is None and len(third) == 2
    assert third.epsilon("0", delta=1e-5) > eps1


def test_corrupt_middle_line_names_line_number(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path)
    ledger.record("0", 1, "train", ROUND)
    ledger.record("0", 2, "train", ROUND)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{not json", lines[1]]) + "\n")
    with pytest.raises(LedgerError, match="line 2"):
        Ledger(path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(extra=1), r"line 1: unknown field\(s\) \['extra'\]"),
        (lambda d: d.pop("scope"), r"line 1: missing field\(s\) \['scope'\]"),
        (lambda d: d.update(scope="party"), "line 1: `scope` must be one of"),
        (lambda d: d["event"].update(type="Laplace"), "line 1: unknown event type 'Laplace'"),
        (lambda d: d.update(round=-1), "line 1: `round` must be an integer >= 0"),
    ],
)
def test_invalid_records_rejected(tmp_path, mutate, message):
    rec = Record("0", 1, "train", ROUND).to_json()
    mutate(rec)
    path = tmp_path / "l.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(LedgerError, match=message):
        Ledger(path)


def test_heterogeneous_client_history_gives_one_epsilon(tmp_path):
    ledger = Ledger(tmp_path / "l.jsonl", accountant="pld")
    a = dpsgd_event(noise_multiplier=1.0, sampling_rate=0.01, steps=500)
    b = dpsgd_event(noise_multiplier=1.5, sampling_rate=0.02, steps=300)
    ledger.record("x", 1, "train", a)
    ledger.record("x", 2, "train", b)
    assert ledger.epsilon("x", delta=1e-5) == pytest.approx(
        make_accountant("pld").compose(Composed((a, b))).epsilon(1e-5)
    )
    assert ledger.epsilon("x", delta=1e-5) == pytest.approx(1.683, abs=0.005)


def test_group_writes_each_release_before_returning_and_fsyncs_once(tmp_path, fsyncs):
    calls = fsyncs
    path = tmp_path / "l.jsonl"
    ledger = Ledger(path)
    with ledger.group():
        for rnd in (1, 2, 3):
            ledger.record("a", rnd, "train", ROUND)
            # in the file (another reader sees it) before the caller touches the data
            assert len(Ledger(path)) == rnd
        assert len(calls) == 1  # only the new file's directory entry so far
    assert len(calls) == 2  # one fsync for the whole group
    assert Ledger(path).epsilon("a", delta=1e-5) == ledger.epsilon("a", delta=1e-5)


def test_group_fsyncs_on_error_and_nests(tmp_path, fsyncs):
    ledger = Ledger(tmp_path / "l.jsonl")
    ledger.record("a", 0, "init", ROUND)
    calls = fsyncs
    calls.clear()  # count from here
    with pytest.raises(RuntimeError, match="boom"):
        with ledger.group():
            with ledger.group():  # joins the outer group: no fsync of its own
                ledger.record("a", 1, "train", ROUND)
            assert calls == []
            raise RuntimeError("boom")
    assert len(calls) == 1
    assert len(Ledger(tmp_path / "l.jsonl")) == 2
    ledger.record("a", 2, "train", ROUND)  # outside a group: its own fsync again
    assert len(calls) == 2


def test_group_repairs_a_truncated_last_line(tmp_path):
    path = tmp_path / "l.jsonl"
    Ledger(path).record("a", 1, "train", ROUND)
    with open(path, "a") as fh:
        fh.write('{"client": "a", "rou')
    with pytest.warns(LedgerWarning):
        ledger = Ledger(path)
    with ledger.group():
        ledger.record("a", 2, "train", ROUND)
    again = Ledger(path)
    assert [r.round for r in again] == [1, 2]
    assert again.truncated_line is None
