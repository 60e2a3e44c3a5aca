"""One executor interface for a party's heavy loops: serial (``local``), a process pool (``process``) or
Ray (``ray``), chosen by configuration (:class:`ComputeConfig`, the ``[compute]`` table).

A task is a **module-level function** ``fn(item)`` (or ``fn(shared, item)`` when ``shared`` is given)
applied to plain data: numbers, strings, numpy arrays and bytes. TenSEAL objects cannot be pickled,
so CKKS work crosses process boundaries as serialized bytes (:mod:`fedrec.compute.ckks`). A task pays
a fixed cost (~0.5 ms on Ray, a pickle round trip on a pool), one CKKS operation costs 1-3 ms, so
callers give each task a batch (>= 32 ciphertexts, >= 100k users to score; :func:`batched`).

* :meth:`Executor.map` returns the results in input order; :meth:`Executor.imap_unordered` yields
  ``(index, result)`` as tasks finish, with at most ``2 x workers`` tasks in flight (the driver's
  memory stays bounded whatever the number of items).
* ``shared``: one object every task reads (a CKKS context, a scoring job's spec). Ray puts it into
  its object store once per call; the process pool pickles it with every task (keep it small, or a
  path the workers load and cache).
* A failing task raises :class:`ExecutorError` naming the task index and the engine, with the
  worker's exception as its cause; the other tasks are cancelled. Ray re-runs a task whose worker
  died (``max_retries``), so a worker killed by ``kill -9`` costs one task, not the job.

Pickle stays inside the party: items and results travel between the party's own driver and its own
workers (Ray uses pickle; so does the process pool). No peer's bytes are ever unpickled: what a peer
sent is parsed by the protocol code first, and only the party's own arrays/bytes are handed to tasks.

The results are the same whichever engine runs them (a task is a pure function of its item; tests
compare the engines). Randomized work (CKKS encryption) is equal in distribution, not bit for bit.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

ENGINES = ("local", "process", "ray")
#: environment of a worker process: one BLAS/OpenMP thread each (the engine supplies the parallelism)
_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class ExecutorError(RuntimeError):
    """A task failed, or an engine cannot start (e.g. Ray is not installed)."""


@dataclass(frozen=True)
class ComputeConfig:
    """``[compute]``: where a party's heavy loops run.

    ``engine``: ``local`` (in this process, serially; the default), ``process`` (a pool of local
    worker processes) or ``ray`` (a Ray cluster; ``pip install fedrec[ray]``);
    ``address``: ray only: an existing cluster (``auto``: the one ``ray start`` runs on this machine,
    ``HOST:6379``, or ``ray://HOST:10001``); unset: start a private local Ray with ``workers`` CPUs;
    ``workers``: worker processes (0: all cores; with ``address`` set, the cluster's CPUs count)."""

    engine: str = "local"
    address: str | None = None
    workers: int = 0

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"compute engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"compute workers must be an integer >= 0 (0: all cores), got {self.workers!r}")
        if self.address is not None and self.engine != "ray":
            raise ValueError(f"compute address {self.address!r} is for engine 'ray', not {self.engine!r}")
        if self.address == "":
            raise ValueError("compute address is empty (leave it unset to start a local Ray)")


def batched(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` cut into consecutive batches of ``size`` (the last one shorter)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    return [items[i:i + size] for i in range(0, len(items), size)]


def _call(fn: Callable[..., Any], shared: Any, has_shared: bool, item: Any) -> Any:
    return fn(shared, item) if has_shared else fn(item)


class Executor(ABC):
    """Runs ``fn`` over items on some engine; see the module docstring. Use as a context manager."""

    engine: str = ""
    workers: int = 1
    #: tasks in flight at once (default ``2 x workers``: one running and one queued per worker); 1 runs
    #: the tasks one after another on the same warmed workers (a 1-worker baseline on a bigger cluster)
    max_inflight: int | None = None

    @property
    def inflight(self) -> int:
        return self.max_inflight or 2 * self.workers

    @abstractmethod
    def _run(self, fn: Callable[..., Any], items: Sequence[Any], shared: Any, has_shared: bool
             ) -> Iterator[tuple[int, Any]]:
        """``(index, result)`` as the tasks finish."""

    def imap_unordered(self, fn: Callable[..., R], items: Iterable[Any], *, shared: Any = None,
                       has_shared: bool | None = None) -> Iterator[tuple[int, R]]:
        """``(index, fn(item))`` in completion order (``fn(shared, item)`` when ``shared`` is given)."""
        seq = items if isinstance(items, Sequence) else list(items)
        return self._run(fn, seq, shared, shared is not None if has_shared is None else has_shared)

    def map(self, fn: Callable[..., R], items: Iterable[Any], *, shared: Any = None) -> list[R]:
        """``[fn(item) for item in items]`` (``fn(shared, item)`` when ``shared`` is given), in order."""
        seq = items if isinstance(items, Sequence) else list(items)
        out: list[Any] = [None] * len(seq)
        for i, result in self.imap_unordered(fn, seq, shared=shared):
            out[i] = result
        return out

    def close(self) -> None:  # noqa: B027 - engines without resources keep this no-op
        """Release the engine's resources (idempotent)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _failed(self, i: int, fn: Callable[..., Any], exc: BaseException) -> ExecutorError:
        return ExecutorError(f"{self.engine} engine: task {i} ({getattr(fn, '__qualname__', fn)}) failed: "
                             f"{type(exc).__name__}: {exc}")


class LocalExecutor(Executor):
    """Serial, in this process: the embedded default (no pickling, no worker)."""

    engine = "local"
    workers = 1

    def _run(self, fn: Callable[..., Any], items: Sequence[Any], shared: Any, has_shared: bool
             ) -> Iterator[tuple[int, Any]]:
        for i, item in enumerate(items):
            try:
                result = _call(fn, shared, has_shared, item)
            except Exception as exc:
                raise self._failed(i, fn, exc) from exc
            yield i, result


def _init_worker() -> None:
    """A pool worker: one BLAS thread (set before torch/numpy are imported by the first task)."""
    os.environ.update(_ONE_THREAD)
    import sys

    if "torch" in sys.modules:  # pragma: no cover - spawn workers import it later
        sys.modules["torch"].set_num_threads(1)


class ProcessExecutor(Executor):
    """A pool of ``workers`` local processes (``spawn``: no fork of a process holding threads, sockets or
    a CUDA/OpenMP runtime). Started on first use, reused across calls."""

    engine = "process"

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._pool: Any = None

    def _executor(self) -> Any:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker)
        return self._pool

    def _run(self, fn: Callable[..., Any], items: Sequence[Any], shared: Any, has_shared: bool
             ) -> Iterator[tuple[int, Any]]:
        from concurrent.futures import FIRST_COMPLETED, Future, wait
        from concurrent.futures.process import BrokenProcessPool

        pool = self._executor()
        pending: dict[Future[Any], int] = {}
        nxt = 0
        try:
            while nxt < len(items) or pending:
                while nxt < len(items) and len(pending) < self.inflight:
                    pending[pool.submit(_call, fn, shared, has_shared, items[nxt])] = nxt
                    nxt += 1
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=pending.__getitem__):
                    i = pending.pop(fut)
                    try:
                        result = fut.result()
                    except BrokenProcessPool as exc:
                        self._pool = None  # the next call starts a fresh pool
                        raise ExecutorError(f"process engine: a worker died while running task {i} "
                                            f"({getattr(fn, '__qualname__', fn)}); {len(pending)} task(s) "
                                            "lost with it") from exc
                    except Exception as exc:
                        raise self._failed(i, fn, exc) from exc
                    yield i, result
        finally:
            for fut in pending:
                fut.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor(Executor):
    """Tasks on Ray (one CPU each). Joins an initialised Ray, or a cluster at ``address``, or starts a
    private local one with ``workers`` CPUs (shut down by :meth:`close`). A task whose worker died is
    re-run up to ``max_retries`` times; ``task_env``: extra environment variables of the workers."""

    engine = "ray"

    def __init__(self, workers: int = 0, address: str | None = None, *, max_retries: int = 3,
                 task_env: dict[str, str] | None = None) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ExecutorError("compute engine 'ray' needs Ray: pip install 'fedrec[ray]'") from exc
        self._ray = ray
        self._owns = False
        self.max_retries = max_retries
        if not ray.is_initialized():
            env = {"env_vars": dict(_ONE_THREAD)}
            try:
                if address is not None:
                    ray.init(address=address, runtime_env=env, logging_level=logging.WARNING,
                             log_to_driver=False)
                else:
                    # address="local": a new private Ray, never a stray cluster found on this machine
                    ray.init(address="local", num_cpus=workers or os.cpu_count() or 1,
                             include_dashboard=False, runtime_env=env, logging_level=logging.WARNING,
                             log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ExecutorError(f"ray engine: cannot {'connect to ' + address if address else 'start'}"
                                    f" Ray: {exc}") from exc
            self._owns = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = min(workers, cpus) if workers else cpus
        self._call = ray.remote(num_cpus=1, max_retries=max_retries)(_call)
        if task_env:  # extra environment of the tasks' workers (Ray starts workers with it)
            self._call = self._call.options(runtime_env={"env_vars": {**_ONE_THREAD, **task_env}})

    def _run(self, fn: Callable[..., Any], items: Sequence[Any], shared: Any, has_shared: bool
             ) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        remote = self._call
        ref = ray.put(shared) if has_shared else None
        pending: dict[Any, int] = {}
        nxt = 0
        try:
            while nxt < len(items) or pending:
                while nxt < len(items) and len(pending) < self.inflight:
                    pending[remote.remote(fn, ref, has_shared, items[nxt])] = nxt
                    nxt += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                for obj in done:
                    i = pending.pop(obj)
                    try:
                        result = ray.get(obj)
                    except Exception as exc:
                        cause = getattr(exc, "cause", None) or exc
                        raise self._failed(i, fn, cause) from cause
                    yield i, result
        finally:
            for obj in pending:
                ray.cancel(obj)

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False


def is_parallel(backend: Any, executor: Executor | None) -> bool:
    """Whether the CKKS work of ``backend`` goes to ``executor``'s workers (:mod:`fedrec.compute.ckks`): a
    CKKS backend and an engine other than ``local``. The plain and Paillier backends, and the ``local``
    engine, keep the serial path of the protocols unchanged (nothing imported, nothing paid)."""
    return executor is not None and executor.engine != "local" and getattr(backend, "name", None) == "ckks"


def make_executor(config: ComputeConfig | None = None) -> Executor:
    """The executor of a ``[compute]`` configuration (default: :class:`LocalExecutor`)."""
    cfg = config or ComputeConfig()
    if cfg.engine == "local":
        return LocalExecutor()
    if cfg.engine == "process":
        return ProcessExecutor(cfg.workers)
    return RayExecutor(cfg.workers, cfg.address)
