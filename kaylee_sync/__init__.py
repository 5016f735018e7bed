"""kaylee-sync: a GitOps synchronizer and scheduler for CoreOS fleet + etcd.

It reimplements Kaylee (Go, 2016): unit files in Git become JSON entries under
``/kaylee2/units/`` in etcd, and the elected leader turns those into fleet units.
"""

__version__ = "0.1.0"
