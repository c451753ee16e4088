"""Attack risk beside every ε of a run: metrics.jsonl rows, summary.json and the progress line,
each equal to the ledger's own answer recomputed from ledger.jsonl; and the hooks a logging
callback sees (the rows exactly as metrics.jsonl holds them)."""

from __future__ import annotations

import json

import pytest

from accounting import Ledger
from dpfedlora.federation import Federation
from dpfedlora.federation.risk import RiskView
from dpfedlora.federation.rundir import json_safe
from tests.helpers import tiny_cfg


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def on_run_start(self, cfg) -> None:
        self.calls.append(("start", cfg))

    def on_round(self, row) -> None:
        self.calls.append(("round", row))

    def on_run_end(self, summary) -> None:
        self.calls.append(("end", summary))


@pytest.fixture(scope="module")
def private_run(tmp_path_factory):
    """Two rounds, 3 of 4 clients a round: some client is not sampled in round 1."""
    out = tmp_path_factory.mktemp("risk") / "r"
    cfg = tiny_cfg("server.rounds=2", "train.local_steps=2", "server.clients_per_round=3")
    lines: list[str] = []
    rec = Recorder()
    fed = Federation(cfg, out, log=lines.append, callbacks={"rec": rec})
    summary = fed.run(progress=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return cfg, out, summary, rows, lines, rec


def _ledger_until(src, rnd: int, dst) -> Ledger:
    """An independent replay of the releases up to round ``rnd`` (a fresh file and Ledger)."""
    keep = [x for x in src.read_text().splitlines() if json.loads(x)["round"] <= rnd]
    dst.write_text("".join(x + "\n" for x in keep))
    return Ledger(dst, accountant="fastpld")


def test_every_row_has_epsilon_and_risk_of_every_client_equal_to_the_ledgers(private_run, tmp_path):
    cfg, out, _, rows, _, _ = private_run
    cids = [str(i) for i in range(cfg.data.num_clients)]
    assert [r["round"] for r in rows] == [1, 2]
    unsampled = 0
    for row in rows:
        ledger = _ledger_until(out / "ledger.jsonl", row["round"], tmp_path / f"l{row['round']}")
        assert sorted(row["epsilon_per_client"]) == sorted(row["tpr_at_fpr"]) == cids
        for cid in cids:
            eps = ledger.epsilon(cid, delta=cfg.privacy.delta)
            assert row["epsilon_per_client"][cid] == pytest.approx(eps, rel=1e-12)
            want = ledger.risk(cid).to_json()["tpr_at_fpr"]
            assert row["tpr_at_fpr"][cid] == pytest.approx(want, rel=1e-12)
            if not ledger.history(cid):  # not sampled yet: nothing spent, TPR = FPR
                unsampled += 1
                assert eps == 0.0 and want == pytest.approx(
                    {"0.001": 1e-3, "0.01": 0.01, "0.1": 0.1}
                )
        worst = ledger.max_risk().to_json()["tpr_at_fpr"]
        assert set(worst) == {"0.001", "0.01", "0.1"}
        assert row["max_tpr_at_fpr"] == pytest.approx(worst, rel=1e-12)
        assert row["max_epsilon"] == pytest.approx(max(row["epsilon_per_client"].values()))
    assert unsampled >= 1  # the test covered a client that had not trained yet
    assert rows[1]["max_tpr_at_fpr"]["0.01"] > rows[0]["max_tpr_at_fpr"]["0.01"] >= 0.01


def test_summary_risk_is_the_ledgers_worst_client_and_each_clients(private_run):
    cfg, out, summary, _, _, _ = private_run
    ledger = Ledger(out / "ledger.jsonl", accountant=cfg.privacy.accountant)
    saved = json.loads((out / "summary.json").read_text())
    for s in (summary, saved):
        assert s["risk"]["tpr_at_fpr"] == pytest.approx(ledger.max_risk().to_json()["tpr_at_fpr"])
        assert s["risk"]["advantage"] == pytest.approx(ledger.max_risk().advantage)
        assert sorted(s["risk_per_client"]) == sorted(s["epsilon_per_client"]) == ledger.clients
        for cid, risk in s["risk_per_client"].items():
            want = ledger.risk(cid)
            assert risk["tpr_at_fpr"] == pytest.approx(want.to_json()["tpr_at_fpr"])
            assert risk["advantage"] == pytest.approx(want.advantage)
    assert 0.0 < summary["risk"]["advantage"] < 1.0


def test_the_progress_line_shows_the_worst_tpr_at_1pct_fpr_beside_max_epsilon(private_run):
    _, _, _, rows, lines, _ = private_run
    for row in rows:
        eps, tpr = row["max_epsilon"], row["max_tpr_at_fpr"]["0.01"]
        line = next(x for x in lines if x.startswith(f"round {row['round']}/2 "))
        assert f"max ε {eps:.3f} (TPR@1%FPR ≤ {tpr:.3f})" in line


def test_a_callback_sees_the_rows_of_metrics_jsonl_and_the_summary(private_run):
    cfg, _, summary, rows, _, rec = private_run
    kinds = [k for k, _ in rec.calls]
    assert kinds == ["start", "round", "round", "end"]
    assert rec.calls[0][1] is cfg and rec.calls[-1][1] is summary
    seen = [json.loads(json.dumps(json_safe(r))) for k, r in rec.calls if k == "round"]
    assert seen == rows


def test_a_non_private_run_reports_no_bound_as_it_reports_epsilon_inf(tmp_path):
    cfg = tiny_cfg("privacy.mode=none", "server.rounds=1", "train.local_steps=1")
    lines: list[str] = []
    summary = Federation(cfg, tmp_path / "r", log=lines.append).run(progress=False)
    row = json.loads((tmp_path / "r" / "metrics.jsonl").read_text())
    no_bound = {"0.001": 1.0, "0.01": 1.0, "0.1": 1.0}
    assert row["max_epsilon"] is None  # ∞, as JSON has it
    assert row["epsilon_per_client"] == row["tpr_at_fpr"] == {}
    assert row["max_tpr_at_fpr"] == no_bound
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())
    for s in (summary, saved):
        assert s["risk"] == {"tpr_at_fpr": no_bound, "advantage": 1.0}
        assert s["risk_per_client"] == s["epsilon_per_client"] == {}
    assert any("ε n/a (non-private)" in x for x in lines)


def test_risk_is_computed_once_per_history_not_per_client_and_round(tmp_path):
    """Unchanged histories cost nothing the next round; equal histories share one answer."""
    from accounting import dpsgd_event

    ledger = Ledger(tmp_path / "ledger.jsonl")
    calls: list[str] = []
    real = ledger.risk

    def counting(cid, **kw):
        calls.append(cid)
        return real(cid, **kw)

    ledger.risk = counting
    view = RiskView(ledger, delta=1e-5)
    event = dpsgd_event(noise_multiplier=1.0, sampling_rate=0.1, steps=10)
    cids = [str(i) for i in range(50)]
    for cid in cids:
        ledger.record(cid, 1, "train", event)
    first = view.row_fields(cids)
    assert len(calls) == 1  # fifty clients, one history
    ledger.record("7", 2, "train", event)
    second = view.row_fields(cids)
    assert len(calls) == 2  # only client 7's history changed
    assert second["tpr_at_fpr"]["0"] == first["tpr_at_fpr"]["0"]
    assert second["tpr_at_fpr"]["7"]["0.01"] > first["tpr_at_fpr"]["7"]["0.01"]
    assert second["max_tpr_at_fpr"] == second["tpr_at_fpr"]["7"]
