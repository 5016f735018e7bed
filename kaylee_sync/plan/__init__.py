"""Planning: desired state (a commit) vs actual state (etcd) → a Plan (pure, no I/O)."""
