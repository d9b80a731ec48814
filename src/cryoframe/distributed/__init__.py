"""Where cryoframe's Dask graphs run: scheduler selection, batch clusters and progress.

``scheduler(spec)`` is a context manager; inside it ``dask.compute`` uses the scheduler the spec
names (``threads``, ``processes``, ``synchronous``, ``local:N``, ``cuda``, ``tcp://HOST:PORT``,
``slurm``, ``pbs``) and anything it started is closed on exit::

    with scheduler("local:4", dashboard=True) as info, progress_context():
        result = dask.compute(graph)

``job_script("slurm", "deploy/slurm.yaml")`` renders the dask-jobqueue job script without
submitting anything.  Errors are ``SchedulerError`` (a ``CryoframeError``).
"""

from cryoframe.distributed.cluster import (
    CONNECT_TIMEOUT_S,
    VALID_SPECS,
    SchedulerError,
    SchedulerInfo,
    job_script,
    load_jobqueue_config,
    parse_spec,
    scheduler,
)
from cryoframe.distributed.progress import current_client, progress_context, show_progress

__all__ = [
    "CONNECT_TIMEOUT_S",
    "VALID_SPECS",
    "SchedulerError",
    "SchedulerInfo",
    "current_client",
    "job_script",
    "load_jobqueue_config",
    "parse_spec",
    "progress_context",
    "scheduler",
    "show_progress",
]
