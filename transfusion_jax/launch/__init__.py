"""Launchers that start jobs on machines other than this one (`tpu_vm`: Cloud TPU VMs).

They use only the standard library, so they run from a checkout on any Python 3.11+ with
nothing installed."""
