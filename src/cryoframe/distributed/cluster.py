"""One scheduler spec string -> a Dask scheduler for the duration of a ``with`` block.

Specs (``VALID_SPECS``): ``threads`` (default), ``processes``, ``synchronous``, ``local:N``
(``N`` worker processes on 127.0.0.1), ``cuda`` (one worker per GPU, ``[gpu]`` extra),
``tcp://HOST:PORT`` (an existing scheduler), ``slurm`` / ``pbs`` (dask-jobqueue from a YAML file,
a base dependency).  Inside the block ``dask.compute`` uses the chosen scheduler; clusters and
clients opened here are closed on exit.  Nothing heavy is imported until a spec needs it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import logging
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryoframe.backend import available_cores
from cryoframe.distributed.progress import current_client
from cryoframe.errors import CryoframeError

if TYPE_CHECKING:
    from dask_jobqueue.core import JobQueueCluster
    from distributed import Client
    from distributed.deploy.spec import SpecCluster

__all__ = ["CONNECT_TIMEOUT_S", "VALID_SPECS", "SchedulerError", "SchedulerInfo", "job_script",
           "load_jobqueue_config", "parse_spec", "scheduler"]

log = logging.getLogger(__name__)

VALID_SPECS = ("threads", "processes", "synchronous", "local:N", "cuda", "tcp://HOST:PORT", "slurm", "pbs")
CONNECT_TIMEOUT_S = 10.0
_REQUIRED = ("cores", "memory", "walltime")
_OPTIONAL = ("queue", "account", "processes", "n_workers", "gpus", "worker_command", "job_extra_directives",
             "local_directory", "interface", "log_directory", "job_script_prologue", "python", "death_timeout")
_PBS_ONLY = ("resource_spec",)
# console-script names people write -> what dask-jobqueue runs as ``python -m <worker_command>``
_WORKER_COMMANDS = {"dask-worker": "distributed.cli.dask_worker", "dask-cuda-worker": "dask cuda worker"}
_PLACEHOLDER_ADDRESS = "tcp://SCHEDULER_HOST:8786"


class SchedulerError(CryoframeError):
    """A scheduler spec is invalid, or the scheduler/cluster it names cannot be started or reached."""


@dataclass(frozen=True)
class SchedulerInfo:
    """What ``scheduler()`` chose: ``kind`` (threads, processes, synchronous, local, cuda, tcp, slurm,
    pbs, or client for an already-active default Client), ``n_workers`` (threads for the threaded
    scheduler; worker processes/jobs×processes for clusters), the dashboard link or None, the
    ``distributed.Client`` (None for local schedulers) and the scheduler address (None likewise)."""

    kind: str
    n_workers: int
    dashboard_link: str | None = None
    client: Client | None = None
    address: str | None = None


def _invalid(spec: object, why: str = "") -> SchedulerError:
    return SchedulerError(f"invalid scheduler {spec!r}{why}; valid specs: {', '.join(VALID_SPECS)}")


def parse_spec(spec: str | None) -> tuple[str, Any]:
    """Split a spec into ``(kind, argument)``: ``("local", 4)``, ``("tcp", "tcp://h:8786")``, ``("threads", None)``.

    ``None`` gives ``("default", None)``; ``local`` without ``:N`` means one worker per core.
    """
    if spec is None:
        return "default", None
    if not isinstance(spec, str):
        raise _invalid(spec)
    s = spec.strip()
    low = s.lower()
    if low in ("threads", "processes", "synchronous", "cuda", "slurm", "pbs"):
        return low, None
    if low == "local":
        from dask.system import CPU_COUNT

        return "local", CPU_COUNT
    if low.startswith("local:"):
        n = s[len("local:"):]
        if not n.strip().isdigit() or int(n) < 1:
            raise _invalid(spec, f" (N in local:N must be a positive integer, got {n!r})")
        return "local", int(n)
    if low.startswith("tcp://"):
        host, sep, port = s[len("tcp://"):].rpartition(":")
        if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            raise _invalid(spec, " (tcp:// needs a host and a port, e.g. tcp://SCHEDULER_HOST:8786)")
        return "tcp", s
    raise _invalid(spec)


@contextlib.contextmanager
def scheduler(spec: str | None = "threads", *, dashboard: bool = False, quiet: bool = False,
              config: str | None = None, workers: int | None = None) -> Iterator[SchedulerInfo]:
    """Use the scheduler ``spec`` names for the duration of the ``with`` block.

    ``dashboard`` starts a dashboard on a free port for clusters started here; ``quiet`` silences
    distributed's logs below ERROR; ``config`` is the YAML file for ``slurm``/``pbs`` (default
    ``deploy/<kind>.yaml`` in the current directory or the repository); ``workers`` overrides the
    config's ``n_workers`` (jobs to submit) for ``slurm``/``pbs``.  ``None`` keeps an already-active
    default ``distributed.Client`` and otherwise means ``threads``.  Raises ``SchedulerError``.
    """
    kind, arg = parse_spec(spec)
    if workers is not None and kind not in ("slurm", "pbs"):
        raise SchedulerError(f"workers= applies to slurm and pbs only (for a local cluster write local:{workers})")
    if kind == "default":
        client = current_client()
        if client is not None:
            yield SchedulerInfo("client", len(client.nthreads()), _dashboard(client), client, client.scheduler.address)
            return
        kind = "threads"
    if kind in ("threads", "processes", "synchronous"):
        n = 1 if kind == "synchronous" else _local_pool_size()
        log.debug("dask scheduler: %s (%d workers)", kind, n)
        if kind == "threads" and "dask" not in sys.modules and "DASK_SCHEDULER" not in os.environ:
            # dask is not loaded yet (a CLI run): importing it costs 0.15 s that a job which builds no
            # graph (subset of a column, query) need not pay.  If the block does import dask, it reads
            # the same setting from the environment; afterwards the setting is removed again.
            os.environ["DASK_SCHEDULER"] = "threads"
            try:
                yield SchedulerInfo(kind, n)
            finally:
                del os.environ["DASK_SCHEDULER"]
                if "dask" in sys.modules:
                    sys.modules["dask"].config.config.pop("scheduler", None)
            return
        import dask

        with dask.config.set(scheduler=kind):
            yield SchedulerInfo(kind, n)
        return
    with contextlib.ExitStack() as stack:
        stack.enter_context(_third_party_logs(logging.ERROR if quiet else logging.WARNING))
        info = _open_distributed(kind, arg, stack, dashboard=dashboard, quiet=quiet, config=config,
                                 workers=workers)
        (log.debug if quiet else log.info)(
            "dask scheduler: %s at %s, %d worker(s)%s", kind, info.address, info.n_workers,
            f", dashboard {info.dashboard_link}" if info.dashboard_link else "")
        yield info


@contextlib.contextmanager
def _third_party_logs(level: int) -> Iterator[None]:
    """Raise distributed's/dask-jobqueue's logger levels to ``level`` for the block (scheduler and
    nanny chatter would otherwise reach an application's INFO root handler); restore them after."""
    import distributed  # noqa: F401  (its import sets the "distributed" level: do that first)

    loggers = [logging.getLogger(name) for name in ("distributed", "dask_jobqueue")]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), level))
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, old, strict=True):
            lg.setLevel(lvl)


def _local_pool_size() -> int:
    if "dask" not in sys.modules:  # the CPUs this process may run on (what dask's CPU_COUNT starts from)
        return available_cores()
    import dask
    from dask.system import CPU_COUNT

    return int(dask.config.get("num_workers", None) or CPU_COUNT)


def _dashboard(client: Client) -> str | None:
    try:  # Client.dashboard_link formats a link even when no HTTP server runs: ask the scheduler
        if "dashboard" not in client.scheduler_info(n_workers=0).get("services", {}):
            return None
        return client.dashboard_link or None
    except Exception:
        return None


def _open_distributed(kind: str, arg: Any, stack: contextlib.ExitStack, *, dashboard: bool, quiet: bool,
                      config: str | None, workers: int | None) -> SchedulerInfo:
    """Start (or connect to) the scheduler; register every close on ``stack``; return its info."""
    silence = logging.ERROR if quiet else logging.WARNING
    # the scheduler always serves HTTP (health, metrics) and defaults to port 8787: take a free port
    # on 127.0.0.1 for local clusters, and serve the bokeh dashboard only when asked
    local_http = {"dashboard_address": "127.0.0.1:0" if dashboard else None,
                  "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"}}
    if kind == "tcp":
        client = _connect(arg)
        stack.callback(client.close)
        n = len(client.nthreads())
        if n == 0:
            log.warning("the scheduler at %s has no workers yet; computations wait until one joins", arg)
        return SchedulerInfo("tcp", n, _dashboard(client), client, arg)

    from distributed import Client

    cluster: SpecCluster
    jq: JobQueueCluster | None = None
    if kind == "local":
        from distributed import LocalCluster

        try:
            cluster = LocalCluster(n_workers=arg, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   silence_logs=silence, **local_http)
        except Exception as exc:
            raise SchedulerError(f"could not start a local:{arg} cluster on 127.0.0.1: {exc}") from exc
    elif kind == "cuda":
        cluster = _cuda_cluster(local_http, silence)
    else:  # slurm / pbs
        cfg, path = load_jobqueue_config(kind, config)
        jobs = int(workers if workers is not None else cfg.get("n_workers", 1))
        if jobs < 0:
            raise SchedulerError(f"workers must be >= 0, got {jobs}")
        cls = _jobqueue_class(kind)
        if jobs and shutil.which(cls.job_cls.submit_command) is None:
            raise SchedulerError(
                f"scheduler {kind!r}: {cls.job_cls.submit_command} is not on PATH; run this on a {kind.upper()} "
                f"login node (or print the job script with `cryoframe cluster {kind} --print-job-script`)")
        kw = _jobqueue_kwargs(kind, cfg, path)
        try:
            cluster = jq = cls(**kw, scheduler_options={"dashboard": dashboard, "dashboard_address": ":0"})
        except Exception as exc:
            raise SchedulerError(f"could not start the {kind} cluster from {path}: {exc}") from exc
    stack.callback(cluster.close)
    n_workers = len(cluster.workers)
    if jq is not None:  # slurm / pbs
        n_workers = jobs * int(cfg.get("processes") or 1)
        if jobs:
            jq.scale(jobs=jobs)
            log.info("submitted %d %s job(s); workers join as the jobs start", jobs, kind)
    client = Client(cluster)
    stack.callback(client.close)
    link = (client.dashboard_link or None) if dashboard else None
    return SchedulerInfo(kind, n_workers, link, client, cluster.scheduler_address)


def _connect(address: str, timeout: float = CONNECT_TIMEOUT_S) -> Client:
    """Client to an existing scheduler; a refused/unreachable address fails fast with a clear error."""
    hostport = address[len("tcp://"):]
    host, _, port = hostport.rpartition(":")
    host = host.strip("[]")
    hint = "is `dask scheduler` (or `cryoframe cluster ...`) running there, and is the port open?"
    try:  # a plain TCP probe: 'connection refused' returns at once instead of retrying for `timeout`
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise SchedulerError(f"cannot reach the Dask scheduler at {address}: {exc}; {hint}") from exc
    from distributed import Client

    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise SchedulerError(
            f"could not connect to the Dask scheduler at {address} within {timeout:g} s: {exc}; {hint}") from exc


def _cuda_cluster(http: dict[str, Any], silence: int) -> Any:
    if importlib.util.find_spec("dask_cuda") is None:
        raise SchedulerError("scheduler 'cuda' needs the [gpu] extra (pip install 'cryoframe[gpu]')")
    from cryoframe.backend import gpu_available

    if not gpu_available():
        raise SchedulerError("scheduler 'cuda' needs a CUDA GPU, but none is visible (check nvidia-smi, "
                             "CUDA_VISIBLE_DEVICES and that cupy from the [gpu] extra imports)")
    from dask_cuda import LocalCUDACluster

    try:
        return LocalCUDACluster(host="127.0.0.1", silence_logs=silence, **http)
    except Exception as exc:
        raise SchedulerError(f"could not start a LocalCUDACluster: {exc}") from exc


# -- dask-jobqueue (SLURM / PBS) -----------------------------------------------------------------------

def _resolve_config(kind: str, config: str | None) -> Path:
    from cryoframe._resources import package_data

    name = config or f"deploy/{kind}.yaml"
    p = Path(name).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p]
    shipped = package_data("_deploy", "deploy")
    if config is None and shipped is not None:  # the default config shipped with the package
        candidates.append(shipped / f"{kind}.yaml")
    for c in candidates:
        if c.is_file():
            return c
    looked = ", ".join(dict.fromkeys(str(c) for c in candidates))
    raise SchedulerError(f"{kind} config {name} not found (looked at {looked}); pass --config PATH "
                         f"(deploy/{kind}.yaml, shipped with cryoframe, is a commented template)")


def load_jobqueue_config(kind: str, config: str | None = None) -> tuple[dict[str, Any], Path]:
    """Read and validate the YAML config of a ``slurm``/``pbs`` cluster; return ``(mapping, path)``."""
    import yaml
    from dask.utils import parse_bytes

    path = _resolve_config(kind, config)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SchedulerError(f"{path}: cannot read the {kind} config: {exc}") from exc
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise SchedulerError(f"{path}: expected a mapping of keys ({', '.join(_REQUIRED)}, ...), "
                             f"got {type(data).__name__}")
    missing = [k for k in _REQUIRED if data.get(k) in (None, "")]
    if missing:
        raise SchedulerError(f"{path}: missing required key(s) {', '.join(missing)} "
                             f"(a {kind} config needs {', '.join(_REQUIRED)})")
    allowed = set(_REQUIRED + _OPTIONAL + (_PBS_ONLY if kind == "pbs" else ()))
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise SchedulerError(f"{path}: unknown key(s) {', '.join(map(str, unknown))}; "
                             f"allowed: {', '.join(sorted(allowed))}")
    cfg = dict(data)
    for key, low in (("cores", 1), ("processes", 1), ("n_workers", 0), ("gpus", 0)):
        v = cfg.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise SchedulerError(f"{path}: {key} must be an integer >= {low}, got {v!r}")
    try:
        parse_bytes(str(cfg["memory"]))
    except (ValueError, TypeError) as exc:
        raise SchedulerError(f"{path}: memory {cfg['memory']!r} is not a size like \"32GB\"") from exc
    if isinstance(cfg["walltime"], int):  # YAML 1.1 reads an unquoted 30:00 as sexagesimal seconds
        h, rem = divmod(cfg["walltime"], 3600)
        cfg["walltime"] = f"{h:02d}:{rem // 60:02d}:{rem % 60:02d}"
    for key in ("job_extra_directives", "job_script_prologue"):
        v = cfg.get(key)
        if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
            raise SchedulerError(f"{path}: {key} must be a list of strings, got {v!r}")
    return cfg, path


def _jobqueue_class(kind: str) -> Any:
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise SchedulerError(f"scheduler {kind!r} needs dask-jobqueue, a base dependency (pip install dask-jobqueue)") from exc
    return dask_jobqueue.SLURMCluster if kind == "slurm" else dask_jobqueue.PBSCluster


def _jobqueue_kwargs(kind: str, cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """dask-jobqueue keyword arguments from a validated config (``gpus`` and ``worker_command`` mapped)."""
    from dask.utils import parse_bytes

    passthrough = ("cores", "memory", "walltime", "queue", "account", "processes", "local_directory",
                   "interface", "log_directory", "job_script_prologue", "python", "death_timeout", "resource_spec")
    kw = {k: cfg[k] for k in passthrough if cfg.get(k) is not None}
    kw["memory"] = str(kw["memory"])
    extra = list(cfg.get("job_extra_directives") or [])
    gpus = int(cfg.get("gpus") or 0)
    if gpus and kind == "slurm":
        extra.append(f"--gres=gpu:{gpus}")
    elif gpus:  # PBS Pro: GPUs are a chunk resource of the select statement
        from dask_jobqueue.pbs import pbs_format_bytes_ceil

        spec = kw.get("resource_spec") or (
            f"select=1:ncpus={kw['cores']}:mem={pbs_format_bytes_ceil(parse_bytes(kw['memory']))}")
        kw["resource_spec"] = spec if "ngpus" in spec else f"{spec}:ngpus={gpus}"
    if extra:
        kw["job_extra_directives"] = extra
    command = cfg.get("worker_command")
    if command:
        from dask_jobqueue.core import Job

        if "worker_command" not in inspect.signature(Job.__init__).parameters:
            raise SchedulerError(f"{path}: worker_command needs a newer dask-jobqueue (>= 0.8.2); upgrade it "
                                 "or remove the key and start GPU workers yourself")
        kw["worker_command"] = _WORKER_COMMANDS.get(command, command)
    return kw


def job_script(kind: str, config: str | None = None) -> str:
    """The batch script dask-jobqueue would submit for one ``slurm``/``pbs`` worker job.

    Builds the cluster object without scaling it (nothing is submitted; sbatch/qsub need not exist)
    and closes it.  The scheduler address in the script belongs to that throwaway scheduler; when the
    configured ``interface`` does not exist on this machine the placeholder tcp://SCHEDULER_HOST:8786
    is used instead.
    """
    kind = kind.lower()
    if kind not in ("slurm", "pbs"):
        raise SchedulerError(f"job scripts exist for slurm and pbs, not {kind!r}")
    cfg, path = load_jobqueue_config(kind, config)
    cls = _jobqueue_class(kind)
    kw = _jobqueue_kwargs(kind, cfg, path)
    with _third_party_logs(logging.WARNING):
        return _render_job_script(kind, cls, kw, path)


def _render_job_script(kind: str, cls: Any, kw: dict[str, Any], path: Path) -> str:
    import psutil

    try:
        if kw.get("interface") and kw["interface"] not in psutil.net_if_addrs():
            log.debug("interface %s is not on this machine: job script with a placeholder address", kw["interface"])
            job = cls.job_cls(_PLACEHOLDER_ADDRESS, name="dummy-name", protocol=None, security=None, **kw)
            return job.job_script()
        cluster = cls(**kw, n_workers=0, scheduler_options={"dashboard": False, "dashboard_address": "127.0.0.1:0"})
    except Exception as exc:
        raise SchedulerError(f"{path}: dask-jobqueue rejected the {kind} config: {exc}") from exc
    try:
        return cluster.job_script()
    finally:
        cluster.close()
