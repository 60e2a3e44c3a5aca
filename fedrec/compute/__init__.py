"""Where a party's heavy loops run: one :class:`Executor` interface over a serial loop, a local process
pool or Ray (``[compute] engine = "local" | "process" | "ray"``; Ray is the optional extra
``pip install 'fedrec[ray]'``). See :mod:`fedrec.compute.executor`; CKKS batches in
:mod:`fedrec.compute.ckks`; sharded batch scoring in :mod:`serving.sharded`."""

from fedrec.compute.executor import (
    ENGINES,
    ComputeConfig,
    Executor,
    ExecutorError,
    LocalExecutor,
    ProcessExecutor,
    RayExecutor,
    batched,
    make_executor,
)

__all__ = ["ENGINES", "ComputeConfig", "Executor", "ExecutorError", "LocalExecutor", "ProcessExecutor",
           "RayExecutor", "batched", "make_executor"]
