"""The ``kaylee-sync`` daemon: the building blocks, and the process that wires them.

- ``triggers``: the one coalescing "sync now" funnel and its feeders (poll timer, ref
  watcher); webhooks and leadership feed the same queue.
- ``http``: /healthz, /readyz, /metrics and POST /hooks/git (``webhook`` checks it).
- ``metrics``: the Prometheus metrics and the calls that update them.
- ``notify``: systemd's notify protocol (readiness, status, watchdog).
- ``logs``: text or JSON log output, with secrets scrubbed from every record.

Each block stands alone and is tested alone; ``daemon`` wires them to election, sync
and the scheduler.
"""
