"""Compatibility: the tour behind ``cryoframe demo`` is the job module :mod:`cryoframe.jobs.demo`."""

from cryoframe.jobs.demo import run_demo

__all__ = ["run_demo"]
