"""Deployment on Flower (optional extra ``dpfedlora[flower]``).

- :mod:`.server_app`: the ServerApp. It runs the same :class:`~dpfedlora.federation.Federation`
  loop as ``dpfedlora run``, with clients that are Flower SuperNodes (:class:`FlowerClients`).
- :mod:`.client_app`: a thin, torch-free ClientApp that forwards each message to the node's
  warm worker.
- :mod:`.worker`: the node-local worker. It holds the model, the owner's shard, and the owner's
  own ledger and budget. It refuses any request that would cross that budget.
- :mod:`.protocol`: the worker's socket, its key, and the framing both sides use.
- :mod:`.certs`, :mod:`.local`: a throwaway CA, and ``dpfedlora deploy local`` on loopback.
"""
