"""A corpus of user mistakes across every verb: each exits 2 with one line naming the problem,
no traceback, and nothing spent (no ledger record anywhere under the working directory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpfedlora.cli import main

TINY = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")


def _files(tmp: Path) -> dict[str, str]:
    """Bad files the corpus refers to by name."""
    (tmp / "bad.yaml").write_text("model:\n  name: [unclosed\n")
    (tmp / "list.yaml").write_text("- a\n- b\n")
    (tmp / "binary.yaml").write_bytes(b"\xff\xfe\x00\x81")
    (tmp / "empty.csv").write_text("")
    (tmp / "nolabel.csv").write_text("text,other\nhello,1\nworld,0\n")
    (tmp / "undecodable.csv").write_bytes(b"text,label\n\xff\xfe\xfa,1\n\x81\x82,0\n")
    (tmp / "corrupt").mkdir()
    (tmp / "corrupt" / "ledger.jsonl").write_text('{"client": "0"}\nnot json\n{"a": 1}\n')
    (tmp / "badsweep.yaml").write_text("grid: {privacy.target_epsilon: [1, 3]}\n")
    (tmp / "badsweep2.yaml").write_text(f"base: {TINY}\ngrid: {{train.lr: [0.1, -1]}}\n")
    (tmp / "badsweep3.yaml").write_text(f"base: {TINY}\ngrid: {{nosuch.key: [1]}}\n")
    return {k: str(tmp / k) for k in ("bad.yaml", "list.yaml", "binary.yaml")}


def run(*sets: str) -> list[str]:
    out = ["run", TINY, "--no-progress", "--out", "OUT"]
    for s in sets:
        out += ["--set", s]
    return out


def account(verb: str, **flags: str) -> list[str]:
    """An accounting verb with valid defaults, ``flags`` overriding (or adding) some."""
    base = {"sample_rate": "0.1", "steps": "10", "delta": "1e-5"}
    base.update({"noise_multiplier": "1"} if verb == "epsilon" else {"target_epsilon": "1"})
    base.update(flags)
    return [verb, *(x for k, v in base.items() for x in (f"--{k.replace('_', '-')}", v))]


CASES: list[tuple[str, list[str], str]] = [
    # (id, argv, a word the message must contain)
    ("optimizer", run("train.optimizer=adamx"), "train.optimizer"),
    ("lr-negative", run("train.lr=-0.1"), "train.lr"),
    ("lr-nan", run("train.lr=nan"), "train.lr"),
    ("lr-inf", run("train.lr=inf"), "train.lr"),
    ("lr-string", run("train.lr=fast"), "train.lr"),
    ("accountant", run("privacy.accountant=moments"), "privacy.accountant"),
    ("rounds-zero", run("server.rounds=0"), "server.rounds"),
    ("rounds-float", run("server.rounds=1.5"), "server.rounds"),
    ("clients-per-round", run("server.clients_per_round=-3"), "server.clients_per_round"),
    ("sampling-rate", run("train.sampling_rate=1.5"), "train.sampling_rate"),
    ("sampling-rate-neg", run("train.sampling_rate=-0.1"), "train.sampling_rate"),
    ("max-length", run("model.max_length=-4"), "model.max_length"),
    ("dtype", run("model.dtype=bf16"), "model.dtype"),
    ("quantization", run("model.quantization=2bit"), "model.quantization"),
    ("quantization-fp32", run("model.quantization=4bit"), "model.dtype"),
    ("device", run("model.device=gpu"), "model.device"),
    ("device-missing-cuda", run("model.device=cuda:7"), "model.device"),
    ("prompt-format", run("model.prompt_format=chatml"), "model.prompt_format"),
    ("prompt-template", run("data.prompt_template=no slot"), "data.prompt_template"),
    ("grad-sample-mode", run("privacy.grad_sample_mode=fast"), "privacy.grad_sample_mode"),
    ("physical-tokens", run("train.physical_batch_tokens=lots"), "train.physical_batch_tokens"),
    ("checkpointing", run("train.gradient_checkpointing=maybe"), "train.gradient_checkpointing"),
    ("plan-no-config", ["plan", "nosuch.yaml"], "CONFIG"),
    ("data-seed-negative", run("data.seed=-1"), "data.seed"),
    ("data-seed-float", run("data.seed=0.5"), "data.seed"),
    ("deploy-no-config", ["deploy", "local", "nosuch.yaml", "--out", "OUT"], "CONFIG"),
    ("deploy-nodes-zero", ["deploy", "local", TINY, "--supernodes", "0"], "--supernodes"),
    ("deploy-nodes-many", ["deploy", "local", TINY, "--supernodes", "5"], "data.num_clients"),
    ("deploy-nodes-text", ["deploy", "local", TINY, "--supernodes", "two"], "--supernodes"),
    ("deploy-timeout", ["deploy", "local", TINY, "--round-timeout", "0"], "--round-timeout"),
    ("deploy-timeout-nan", ["deploy", "local", TINY, "--round-timeout", "nan"], "--round-timeout"),
    ("deploy-bad-key", ["deploy", "local", TINY, "--set", "train.lr=-1"], "train.lr"),
    ("deploy-what", ["deploy", "remote", TINY], "remote"),
    ("deploy-certs-nodes", ["deploy", "certs", "TMP/c", "--supernodes", "0"], "--supernodes"),
    ("deploy-certs-days", ["deploy", "certs", "TMP/c", "--days", "0"], "--days"),
    ("plan-free-memory", ["plan", TINY, "--free-memory", "-1"], "--free-memory"),
    ("plan-bad-key", ["plan", TINY, "--set", "model.dtype=half"], "model.dtype"),
    ("local-steps", run("train.local_steps=0"), "train.local_steps"),
    ("batch-size", run("train.batch_size=0"), "train.batch_size"),
    ("weight-decay", run("train.weight_decay=-1"), "train.weight_decay"),
    ("delta-one", run("privacy.delta=1"), "privacy.delta"),
    ("delta-zero", run("privacy.delta=0"), "privacy.delta"),
    ("delta-large", run("privacy.delta=0.5"), "privacy.delta"),
    ("delta-above-inverse-n", run("privacy.delta=0.01"), "1/n"),
    ("clip", run("privacy.clip_norm=0"), "privacy.clip_norm"),
    ("sigma", run("privacy.noise_multiplier=-1"), "privacy.noise_multiplier"),
    ("target-eps", run("privacy.target_epsilon=-2"), "privacy.target_epsilon"),
    ("target-eps-nan", run("privacy.target_epsilon=nan"), "privacy.target_epsilon"),
    ("privacy-mode", run("privacy.mode=user"), "privacy.mode"),
    ("grad-sample-mode", run("privacy.grad_sample_mode=ew"), "privacy.grad_sample_mode"),
    ("task", run("model.task=regression"), "model.task"),
    ("pooling", run("model.pooling=cls"), "model.pooling"),
    ("num-labels", run("model.num_labels=1"), "model.num_labels"),
    ("device", run("model.device=tpu"), "model.device"),
    ("dropout", run("model.dropout=1.5"), "model.dropout"),
    ("partition-kind", run("data.partition.kind=random"), "data.partition.kind"),
    ("dirichlet-alpha", run("data.partition.alpha=0"), "data.partition.alpha"),
    ("by-column-no-column", run("data.partition.kind=by_column"), "data.partition.column"),
    ("num-clients", run("data.num_clients=0"), "data.num_clients"),
    ("eval-fraction", run("data.eval_fraction=1.0"), "data.eval_fraction"),
    ("rank", run("method.rank=0"), "method.rank"),
    ("method-alpha", run("method.alpha=-8"), "method.alpha"),
    ("weighting", run("method.weighting=random"), "method.weighting"),
    ("method", run("method.name=fedprox"), "method"),
    ("unknown-key", run("train.epochs=3"), "train.epochs"),
    ("unknown-section", run("optimizer.lr=3"), "optimizer"),
    ("override-syntax", run("train.lr"), "key=value"),
    ("override-yaml", run("train.lr=[0.1"), "train.lr"),
    ("seed", run("seed=-1"), "seed"),
    ("name", run("name=a/b"), "name"),
    ("unknown-model", run("model.name=no-such-org/no-such-model"), "model.name"),
    ("unknown-builtin-model", run("model.name=builtin:gpt5"), "builtin:gpt5"),
    ("encoder-causal", run("model.task=causal_lm"), "causal_lm"),
    ("unknown-builtin-data", run("data.name=builtin:mnist"), "builtin:mnist"),
    ("missing-data-file", run("data.name=TMP/missing.csv"), "missing.csv"),
    ("unsupported-data-file", run("data.name=TMP/notes.txt"), ".csv/.tsv"),
    ("bare-data-name", run("data.name=imdb"), "hub:imdb"),
    ("empty-data-file", run("data.name=TMP/empty.csv"), "empty.csv"),
    ("no-label-column", run("data.name=TMP/nolabel.csv"), "label"),
    ("undecodable-data", run("data.name=TMP/undecodable.csv"), "undecodable.csv"),
    ("batch-above-shard", run("train.batch_size=100000"), "batch_size"),
    ("until-round", [*run(), "--until-round", "0"], "--until-round"),
    ("missing-config", ["run", "TMP/nope.yaml"], "nope.yaml"),
    ("yaml-syntax", ["run", "TMP/bad.yaml"], "YAML"),
    ("yaml-not-mapping", ["run", "TMP/list.yaml"], "mapping"),
    ("yaml-binary", ["run", "TMP/binary.yaml"], "binary.yaml"),
    ("epsilon-sigma", account("epsilon", noise_multiplier="0"), "--noise-multiplier"),
    ("epsilon-rate", account("epsilon", sample_rate="2"), "--sample-rate"),
    ("epsilon-delta", account("epsilon", delta="1.5"), "--delta"),
    ("epsilon-delta-large", account("epsilon", delta="0.2"), "below 0.1"),
    ("calibrate-delta-large", account("calibrate", delta="0.1"), "below 0.1"),
    ("epsilon-steps", account("epsilon", steps="-1"), "--steps"),
    ("epsilon-accountant", account("epsilon", accountant="gdp"), "--accountant"),
    ("calibrate-target", account("calibrate", target_epsilon="-1"), "--target-epsilon"),
    ("ledger-missing", ["ledger", "TMP/nothing"], "nothing"),
    ("ledger-corrupt", ["ledger", "TMP/corrupt/ledger.jsonl"], "ledger"),
    ("ledger-dir-without-ledger", ["ledger", "TMP"], "ledger.jsonl"),
    ("ledger-delta", ["ledger", "TMP/corrupt", "--delta", "0"], "--delta"),
    (
        "audit-ghost",
        ["audit", "privacy", TINY, "--set", "privacy.grad_sample_mode=ghost", "--out", "OUT"],
        "grad_sample_mode",
    ),
    ("audit-canaries", ["audit", "privacy", TINY, "--canaries", "1", "--out", "OUT"], "--canaries"),
    (
        "audit-guesses",
        ["audit", "privacy", TINY, "--canaries", "10", "--guesses", "50", "--out", "OUT"],
        "guesses",
    ),
    (
        "audit-confidence",
        ["audit", "privacy", TINY, "--confidence", "1.5", "--out", "OUT"],
        "--confidence",
    ),
    ("audit-kind", ["audit", "privacy", TINY, "--canary-kind", "weights"], "--canary-kind"),
    (
        "audit-bad-set",
        ["audit", "privacy", TINY, "--set", "train.lr=0", "--out", "OUT"],
        "train.lr",
    ),
    (
        "audit-noise-private-data",
        ["audit", "noise", TINY, "--set", "data.name=builtin:sms_spam", "--out", "OUT"],
        "--unsafe-uses-private-data",
    ),
    (
        "audit-noise-methods",
        ["audit", "noise", TINY, "--methods", "fedprox", "--out", "OUT"],
        "--methods",
    ),
    (
        "audit-noise-ghost",
        ["audit", "noise", TINY, "--set", "privacy.grad_sample_mode=ghost", "--out", "OUT"],
        "grad_sample_mode",
    ),
    ("audit-noise-steps", ["audit", "noise", TINY, "--local-steps", "0"], "--local-steps"),
    ("sweep-missing", ["sweep", "TMP/nosweep.yaml"], "nosweep.yaml"),
    ("sweep-no-base", ["sweep", "TMP/badsweep.yaml", "--out", "OUT"], "base"),
    ("sweep-bad-value", ["sweep", "TMP/badsweep2.yaml", "--out", "OUT"], "train.lr"),
    ("sweep-bad-key", ["sweep", "TMP/badsweep3.yaml", "--out", "OUT"], "nosuch"),
    ("report-missing", ["report", "TMP"], "sweep.json"),
]


@pytest.mark.parametrize("case_id,argv,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_spends_nothing(
    tmp_path, capsys, monkeypatch, case_id, argv, needle
):
    monkeypatch.chdir(tmp_path)
    _files(tmp_path)
    argv = [a.replace("TMP", str(tmp_path)).replace("OUT", str(tmp_path / "out")) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip() and "warn" not in x.lower()]
    assert code == 2, (case_id, err)
    assert "Traceback" not in err
    assert len(lines) == 1, lines
    assert needle in lines[0], lines[0]
    ledgers = [p for p in tmp_path.rglob("ledger.jsonl") if "corrupt" not in p.parts]
    assert not ledgers, f"{case_id}: a ledger was written: {ledgers}"
    if (tmp_path / "out").exists():
        assert not (tmp_path / "out" / "checkpoint").exists()


def test_corpus_is_large_and_covers_every_verb():
    verbs = {argv[0] for _, argv, _ in CASES}
    assert len(CASES) >= 40
    assert {"run", "epsilon", "calibrate", "ledger", "audit", "sweep", "report"} <= verbs


def test_refusals_leave_a_run_dir_untouched(tmp_path, capsys):
    """A bad override on --resume of an existing run neither rewrites its config nor spends."""
    out = tmp_path / "r"
    assert main(["run", TINY, "--no-progress", "--out", str(out), "--set", "server.rounds=1"]) == 0
    before = (out / "ledger.jsonl").read_bytes()
    cfg_before = (out / "config.yaml").read_bytes()
    code = main(
        [
            "run",
            TINY,
            "--no-progress",
            "--out",
            str(out),
            "--resume",
            "--set",
            "server.rounds=1",
            "--set",
            "train.lr=nan",
        ]
    )
    assert code == 2
    assert (out / "ledger.jsonl").read_bytes() == before
    assert (out / "config.yaml").read_bytes() == cfg_before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 1
