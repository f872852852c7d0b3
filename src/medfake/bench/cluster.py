"""Run the matrix's cells on a `dask.distributed` cluster (an existing scheduler, or a local one).

Cells of one stage are submitted together and collected as they finish; a cell's result is its `done.json`
in the run folder, so the run folder must be on storage every worker sees (and the workers need medfake, the
same environment and the sample cache). A worker that dies mid-cell leaves a folder without `done.json`: Dask
reschedules the cell (up to `distributed.scheduler.allowed-failures` times, 3 by default) on another worker,
which wipes the folder and redoes it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

from medfake.bench.config import execute_cell
from medfake.errors import MedfakeError


class DaskCells:
    """`Cells.executor` on a Dask cluster: `address` (tcp://HOST:8786) or `workers` local worker processes."""

    def __init__(self, address: str | None = None, workers: int | None = None, threads_per_worker: int = 1):
        from dask.distributed import Client, LocalCluster

        self.cluster = None
        try:
            if address:
                self.client = Client(address, timeout="20s")
            else:
                self.cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=threads_per_worker,
                                            processes=True, dashboard_address=None)
                self.client = Client(self.cluster)
        except OSError as exc:
            raise MedfakeError(f"cannot reach the Dask scheduler ({exc})", address or "local cluster") from None

    def describe(self) -> str:
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        return f"Dask {self.client.scheduler.address}, {len(workers)} worker(s)"

    def run(self, root: Path, jobs: dict[str, Callable[[Path], Any]]) -> Iterator[tuple[str, Any, float]]:
        """Submit every cell, then yield (name, result, seconds) in the order they finish, with a progress bar."""
        from dask.distributed import as_completed
        from distributed.scheduler import KilledWorker

        from medfake.training import progress_bar

        if not jobs:
            return
        stage = uuid.uuid4().hex[:8]
        futures = {self.client.submit(execute_cell, root, name, fn, key=f"cell-{name}-{stage}", pure=False): name
                   for name, fn in jobs.items()}
        with progress_bar() as bar:
            task = bar.add_task(f"cells ({len(jobs)} on the cluster)", total=len(jobs), status="")
            for future in as_completed(futures):
                name = futures[future]
                try:
                    result, seconds = future.result()
                except KilledWorker:
                    self.cancel(futures)
                    raise MedfakeError(f"cell {name}: every worker that ran it died", Path(root) / name) from None
                except BaseException:
                    self.cancel(futures)
                    raise
                bar.update(task, advance=1, status=name)
                bar.console.print(f"{name}: {seconds:.1f} s")
                yield name, result, seconds

    def cancel(self, futures) -> None:
        self.client.cancel(list(futures))

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
