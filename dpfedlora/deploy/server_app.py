"""The Flower ServerApp: ``dpfedlora run``'s loop with SuperNodes as the clients.

Run config (``[tool.flwr.app.config]`` of the packaged app, set by ``dpfedlora deploy``):

- ``config-path``: the YAML config, read on the server's machine.
- ``overrides``: JSON list of ``KEY=VALUE``.
- ``out-dir``: the run directory.
- ``version``: the dpfedlora version the launcher runs. A ServerApp of another version refuses
  to start (the FAB hash covers only the app's pyproject, not the installed code).
- ``nodes``: how many SuperNodes to wait for; together they hold every client's shard.
- ``node-wait``: seconds to wait for them.
- ``round-timeout``: seconds to wait for a round's replies.

The server never reads a shard. Each node reports what its owner declares public: its shard's
size (the server needs it for q) and, only if the owner opts in, a label histogram with
Gaussian noise spent in the owner's ledger. Each node enforces its own budget. The
server's ledger is a mirror built from the events in the replies. A node that does not answer is
counted as having spent its planned release: the mirror never under-counts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from .. import __version__
from ..client.contract import REASONS
from ..wire import Broadcast, Reply
from .client_app import REFUSED

__all__ = ["app", "FlowerClients", "DeployError"]

POLL = 0.2  # seconds between pulls of replies


class DeployError(RuntimeError):
    pass


def _record(header: dict[str, Any], payloads: list[bytes]) -> RecordDict:
    return RecordDict({"dpfedlora": ConfigRecord({"header": json.dumps(header),
                                                  "payloads": payloads})})  # fmt: skip


class FlowerClients:
    """The :class:`~dpfedlora.federation.server.Clients` of a deployment: one SuperNode per
    client, found by the partition id it reports."""

    mirrors = True

    def __init__(self, grid: Grid, cfg, *, nodes: int, node_wait: float,
                 round_timeout: float, log: Callable[[str], None] = print) -> None:  # fmt: skip
        from ..config import to_dict

        self.grid, self.cfg, self.log, self.nodes = grid, cfg, log, nodes
        self.node_wait, self.round_timeout = node_wait, round_timeout
        self.cfg_data = to_dict(cfg)
        self.node_of: dict[str, int] = {}
        self.planned: Callable[[str, float], Any] | None = None  # set once specs are known

    # ------------------------------------------------------------ nodes
    def describe(self):
        """Wait for every node, ask each for its shard; the :class:`ShardInfo` list."""
        from ..federation.setup import ShardInfo

        n, deadline = self.cfg.data.num_clients, time.monotonic() + self.node_wait
        while len(ids := sorted(self.grid.get_node_ids())) < self.nodes:
            if time.monotonic() > deadline:
                raise DeployError(f"{len(ids)} of {self.nodes} SuperNodes connected after "
                                  f"{self.node_wait:g} s.")  # fmt: skip
            time.sleep(POLL)
        header = {"config": self.cfg_data}
        msgs = [self._message(nid, MessageType.QUERY, header, [], "describe") for nid in ids]
        pushed = list(self.grid.push_messages(msgs))
        replies = self._pull(pushed, self.node_wait)
        infos: dict[str, ShardInfo] = {}
        for nid, mid in zip(ids, pushed):
            got = replies.get(mid)
            if got is None or got.has_error():
                why = "no reply" if got is None else got.error.reason
                raise DeployError(f"SuperNode {nid} did not describe its shards: {why}")
            info = json.loads(str(got.content["dpfedlora"]["header"]))
            if info["version"] != __version__:
                raise DeployError(
                    f"SuperNode {nid} runs dpfedlora {info['version']}; the server runs "
                    f"{__version__}. Install the same version."
                )
            if "refused" in info:
                code = info["refused"]
                raise DeployError(f"SuperNode {nid} refused the run ({code}: "
                                  f"{REASONS.get(code, 'unknown reason')}).")  # fmt: skip
            for shard in info["shards"]:
                cid = shard["cid"]
                if cid in infos:
                    raise DeployError(f"two SuperNodes hold partition {cid}.")
                if shard.get("num_examples") is None:
                    raise DeployError(
                        f"SuperNode {nid} declares no public size for partition {cid}; the "
                        "server needs it for q = batch / n. Its owner may set "
                        "`public-shard-size = true` in the node config."
                    )
                # label counts leave a node only noised, and only if its owner opts in
                counts = tuple(shard.get("label_counts", ()))
                infos[cid] = ShardInfo(cid, int(shard["num_examples"]), counts)
                self.node_of[cid] = nid
        missing = [str(i) for i in range(n) if str(i) not in infos]
        if missing:
            raise DeployError(f"no SuperNode has partition-id {', '.join(missing)}.")
        return [infos[str(i)] for i in range(n)]

    def _message(self, nid: int, kind: str, header, payloads: list[bytes], group: str,
                 ttl: float | None = None) -> Message:  # fmt: skip
        return Message(content=_record(header, payloads), dst_node_id=nid, message_type=kind,
                       group_id=group, ttl=ttl)  # fmt: skip

    # ------------------------------------------------------------ rounds
    def train_all(self, broadcasts: Iterable[Broadcast], stop) -> Iterator[Reply]:
        """One message per node with the broadcasts of all its sampled clients (a SuperNode
        handles one message at a time), all pushed at once; replies in broadcast order."""
        sent = list(broadcasts)
        by_node: dict[int, list[Broadcast]] = {}
        for b in sent:
            by_node.setdefault(self.node_of[b.client], []).append(b)
        header = {"config": self.cfg_data}
        nodes = list(by_node)
        group = str(sent[0].round) if sent else "0"
        # a request the server stops waiting for expires, so a node that comes back later
        # never trains on a round that is over
        msgs = [self._message(nid, MessageType.TRAIN, header,
                              [b.to_bytes() for b in by_node[nid]], group, self.round_timeout)
                for nid in nodes]  # fmt: skip
        ids = list(self.grid.push_messages(msgs))
        got = self._pull(ids, self.round_timeout)
        replies: dict[str, Reply] = {}
        for nid, mid in zip(nodes, ids):
            replies.update(self._replies(by_node[nid], got.get(mid)))
        for b in sent:
            yield replies[b.client]

    def _pull(self, ids: list[str], timeout: float) -> dict[str, Message]:
        pending, got = set(ids), {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                mid = reply.metadata.reply_to_message_id
                got[mid] = reply
                pending.discard(mid)
            if pending:
                time.sleep(POLL)
        return got

    def _replies(self, sent: list[Broadcast], msg: Message | None) -> dict[str, Reply]:
        """A node's answer, one :class:`Reply` per broadcast it was sent."""
        if msg is not None and not msg.has_error():
            record = msg.content["dpfedlora"]
            results = json.loads(str(record["header"]))["results"]
            payloads = [bytes(p) for p in record["payloads"]]
            return {b.client: self._one(b, r, p) for b, r, p in zip(sent, results, payloads)}
        if msg is not None and msg.error.code == REFUSED:
            results = json.loads(msg.error.reason)
            return {b.client: self._one(b, r, b"") for b, r in zip(sent, results)}
        why = (f"no reply within {self.round_timeout:g} s" if msg is None
               else f"node error {msg.error.code}: {msg.error.reason}")  # fmt: skip
        return {b.client: self._missing(b, why) for b in sent}

    def _one(self, b: Broadcast, result: dict[str, Any], payload: bytes) -> Reply:
        if result.get("cid") != b.client:
            return self._missing(b, f"the node answered for client {result.get('cid')!r}")
        if result["status"] in ("ok", "failed"):
            return Reply.from_bytes(payload)
        if result["status"] == "refused":
            refusal = result["reason"]
            return Reply(b.round, b.client, "skipped", metrics=refusal["metrics"],
                         error=refusal["error"])  # fmt: skip
        return self._missing(b, f"node error: {result.get('reason')}")

    def _missing(self, b: Broadcast, why: str) -> Reply:
        # the node may have recorded and spent its release before it failed: count it
        event = self.planned(b.client, b.noise_multiplier) if self.planned else None
        return Reply(b.round, b.client, "failed", event=event, error=why)

    def close(self) -> None:
        pass


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from ..config import load_config
    from ..federation.server import Federation
    from ..federation.setup import build_setup

    rc = context.run_config
    if str(rc["version"]) != __version__:
        raise DeployError(f"the launcher runs dpfedlora {rc['version']}; this ServerApp runs "
                          f"{__version__}. Install the same version everywhere.")  # fmt: skip
    cfg = load_config(str(rc["config-path"]), json.loads(str(rc["overrides"])))
    clients = FlowerClients(grid, cfg, nodes=int(rc["nodes"]), node_wait=float(rc["node-wait"]),
                            round_timeout=float(rc["round-timeout"]))  # fmt: skip
    setup = build_setup(cfg, remote=clients.describe())
    by_cid = {c.spec.cid: c for c in setup.clients}
    clients.planned = lambda cid, sigma: by_cid[cid].planned_event(sigma)

    def log(line: str) -> None:
        print(line, flush=True)

    fed = Federation(cfg, str(rc["out-dir"]), log=log, clients=clients, setup=setup)
    summary = fed.run(progress=False)
    log(f"done: {summary['rounds_completed']} rounds ({summary['stopped_reason']})")
