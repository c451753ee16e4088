"""``dpfedlora deploy``: the same runs on Flower (optional extra ``dpfedlora[flower]``).

- ``deploy local CONFIG --supernodes N``: a SuperLink and N SuperNodes on 127.0.0.1 with TLS and
  SuperNode authentication, started, used and stopped here.
- ``deploy certs DIR --supernodes N``: a throwaway CA, a SuperLink certificate and N SuperNode
  key pairs, for a lab federation across machines.
- ``deploy app``: the folder of the Flower app, for ``flwr run <folder> <connection>``.
"""

from __future__ import annotations

import argparse
import json
import math
import signal

from ..progress import risk_note
from . import CLIError, add_overrides


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="run on Flower: a loopback federation, certificates, the app")
    verbs = p.add_subparsers(dest="deploy_verb", metavar="WHAT", parser_class=type(p))
    verbs.required = True

    local = verbs.add_parser(
        "local",
        help="run CONFIG on a Flower SuperLink and N SuperNodes on 127.0.0.1 (TLS, node auth)",
    )
    local.add_argument("config", metavar="CONFIG", help="YAML config (see configs/)")
    add_overrides(local, "method.name=fedsb")
    local.add_argument(
        "--supernodes",
        type=int,
        default=2,
        metavar="N",
        help="SuperNodes (data owners) to start; node i holds clients i, i+N, ... (default 2)",
    )
    local.add_argument("--out", help="run directory (default runs/<name>-<method>-deploy)")
    local.add_argument(
        "--round-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="seconds the server waits for a round's replies; a node that has not answered "
        "by then is counted missing for that round (default 600)",
    )
    local.add_argument(
        "--secure-noise",
        action="store_true",
        help="nodes draw noise and sampling from OS entropy whatever the config says (the "
        "default of a real deployment; off here so a local run reproduces `dpfedlora run`)",
    )
    local.add_argument("--json", action="store_true", help="print the summary as JSON at the end")
    local.set_defaults(handler=cmd_local)

    certs = verbs.add_parser(
        "certs", help="write a throwaway CA, a SuperLink certificate and SuperNode keys"
    )
    certs.add_argument("folder", metavar="DIR", help="where to write them (created, mode 0700)")
    certs.add_argument("--supernodes", type=int, default=2, metavar="N", help="key pairs (2)")
    certs.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME_OR_IP",
        help="the SuperLink's DNS name or IP address, for its certificate (repeatable; "
        "localhost and 127.0.0.1 are always included)",
    )
    certs.add_argument("--days", type=int, default=7, help="validity in days (7)")
    certs.set_defaults(handler=cmd_certs)

    app = verbs.add_parser("app", help="print the Flower app's folder (for `flwr run`)")
    app.set_defaults(handler=cmd_app)


def _positive_int(name: str, value: int) -> None:
    if value < 1:
        raise CLIError(f"argument {name}: must be an integer >= 1. Found {value}.")


def cmd_local(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ..config import load_config

    if not Path(args.config).is_file():
        raise CLIError(f"argument CONFIG: no such file: {args.config!r}.")
    _positive_int("--supernodes", args.supernodes)
    if not (math.isfinite(args.round_timeout) and args.round_timeout > 0):
        raise CLIError(
            f"argument --round-timeout: must be > 0 seconds. Found {args.round_timeout}."
        )
    # the whole config, before anything is started, written or spent
    cfg = load_config(args.config, args.overrides)
    if args.supernodes > cfg.data.num_clients:
        raise CLIError(
            f"argument --supernodes: at most data.num_clients = {cfg.data.num_clients} (each "
            f"node holds at least one client). Found {args.supernodes}."
        )
    from ..deploy.local import LocalFederation, require_flower

    out = Path(args.out or f"runs/{cfg.name}-{cfg.method.name}-deploy").resolve()
    if (out / "checkpoint" / "state.pt").exists():
        raise CLIError(f"argument --out: {out} already holds a run. Choose another --out.")
    if (out / "deployment").exists():
        # it holds the nodes' own ledgers: never reused for another run, never deleted here
        raise CLIError(
            f"argument --out: {out / 'deployment'} exists (the nodes' ledgers of an earlier "
            "deployment). Remove it or choose another --out."
        )
    require_flower()

    def log(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    noise = "secure" if args.secure_noise else "config"
    # loopback: one person holds every node, so each owner's contract is the config's own (a
    # "config" node takes it from the request; a secure node must state it)
    p = cfg.privacy
    contract = {"epsilon-budget": p.budget, "delta": p.delta, "max-clip-norm": p.clip_norm,
                "accountant": p.accountant, "allow-non-private": not p.private}  # fmt: skip
    contracts = {i: contract for i in range(args.supernodes)} if noise == "secure" else None
    try:
        # SIGTERM, like Ctrl-C, unwinds through LocalFederation.__exit__, which stops every
        # process it started by PID
        previous = signal.signal(signal.SIGTERM, _interrupt)
        with LocalFederation(
            out / "deployment",
            args.supernodes,
            cfg.data.num_clients,
            log=log,
            noise=noise,
            contracts=contracts,
        ) as fed:
            log(
                f"federation up: SuperLink on 127.0.0.1:{fed.port} (TLS, SuperNode "
                f"authentication), {args.supernodes} SuperNodes; logs in {out / 'deployment'}"
            )
            summary = fed.run(
                args.config, out, overrides=args.overrides, round_timeout=args.round_timeout
            )
    except KeyboardInterrupt:
        print("dpfedlora deploy: interrupted; every process it started is stopped.", flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(summary))
        return 0
    eps = summary.get("max_epsilon")
    privacy = "non-private"
    if summary.get("private") and eps is not None:
        privacy = f"max ε = {eps:.3f}" + risk_note((summary.get("risk") or {}).get("tpr_at_fpr"))
    final = ", ".join(f"{k} {v:.3f}" for k, v in summary["final"].items() if isinstance(v, float))
    print(
        f"done: {summary['rounds_completed']} rounds ({summary['stopped_reason']}) on "
        f"{args.supernodes} SuperNodes, {privacy}, {final} -> {out}"
    )
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def cmd_certs(args: argparse.Namespace) -> int:
    from ..deploy.certs import make_certificates

    _positive_int("--supernodes", args.supernodes)
    _positive_int("--days", args.days)
    c = make_certificates(args.folder, args.supernodes, days=args.days, hosts=args.host)
    print(f"CA certificate (give to every SuperNode and the flwr CLI): {c.ca}")
    print(f"SuperLink certificate and key: {c.server_cert} {c.server_key}")
    for key in c.node_keys:
        print(f"SuperNode key: {key} (register {key.with_suffix('.pub')} on the SuperLink)")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from pathlib import Path

    print(Path(__file__).resolve().parent.parent / "deploy" / "app")
    return 0
