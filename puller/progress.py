"""Progress on a terminal, like ``docker pull``: a line per layer and a total.

Layer: output only (no network, no files). ``RichProgress`` satisfies ``puller.pull.Progress``;
its console and clock are injected so output tests are deterministic. Each layer's line goes
waiting -> downloading (bytes and speed) -> verifying (every byte is in, the verdict is
being computed) -> verified / failed. Plain log lines for pipes stay in ``cli.LinePrinter``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from puller.errors import PullVerifyError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

    from puller.pull import Progress as ProgressProtocol
    from puller.report import ImageResult, LayerResult

WAITING = "Waiting"
DOWNLOADING = "Downloading"
VERIFYING = "Verifying"
VERIFIED = "Verified"
FAILED = "FAILED"


def layer_status(layer: LayerResult) -> str:
    """The last word on a finished layer: short, so a line fits 80 columns."""
    if layer.error is not None:
        return f"{FAILED} {layer.error.kind}"
    if layer.skipped is not None:
        return "Already verified"
    if layer.verdict is None:
        return "Not checked"
    return VERIFIED


class RichProgress:
    """Live per-layer lines on a terminal; call ``close()`` (or use ``open_progress``)."""

    def __init__(
        self,
        console: Console | None = None,
        *,
        get_time: Callable[[], float] = time.monotonic,
        auto_refresh: bool = True,
    ) -> None:
        # rich costs ~30 ms of start-up; pipes and --quiet never get here.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        self.console = console or Console(stderr=False)
        self._progress = Progress(
            TextColumn("{task.description}"),
            TextColumn("{task.fields[status]:<12}"),
            BarColumn(bar_width=20),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=self.console,
            get_time=get_time,
            auto_refresh=auto_refresh,
            transient=False,
        )
        self._tasks: dict[int, TaskID] = {}  # id(layer) -> its row; layers live for the pull
        self._total: TaskID | None = None
        self._layers = 0
        self._done = 0
        self._failed = 0
        self._started = False

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._progress.start()

    def close(self) -> None:
        if self._started:
            self._progress.refresh()
            self._progress.stop()
            self._started = False

    # -- the Progress protocol --------------------------------------------------------------

    def image_started(self, image: ImageResult) -> None:
        self.start()
        if image.platform is not None:
            self._progress.console.print(f"{image.reference} ({image.platform})")
        else:
            self._progress.console.print(image.reference)
        if self._total is None:
            self._total = self._progress.add_task("Total        ", total=0, status="")
        for layer in image.layers:
            task = self._progress.add_task(
                f"{layer.descriptor.digest.short}:",
                total=layer.descriptor.size,
                status=WAITING,
            )
            self._tasks[id(layer)] = task
            self._layers += 1
            total = self._progress.tasks[self._total_index()].total or 0
            self._progress.update(self._total, total=total + layer.descriptor.size)
        self._update_total_status()

    def layer_started(self, image: ImageResult, layer: LayerResult) -> None:
        task = self._task(layer)
        if task is not None:
            self._progress.update(task, status=DOWNLOADING)

    def layer_advanced(self, layer: LayerResult, nbytes: int) -> None:
        task = self._task(layer)
        if task is None:
            return
        self._progress.advance(task, nbytes)
        if self._total is not None:
            self._progress.advance(self._total, nbytes)
        row = self._progress.tasks[self._row_index(task)]
        if row.total is not None and row.completed >= row.total:
            self._progress.update(task, status=VERIFYING)

    def layer_finished(self, image: ImageResult, layer: LayerResult) -> None:
        task = self._task(layer)
        if task is None:
            return
        row = self._progress.tasks[self._row_index(task)]
        if layer.ok and row.total is not None and row.completed < row.total:
            # A layer skipped (already in a store) counts as done for the total too.
            missing = row.total - row.completed
            self._progress.update(task, completed=row.total)
            if self._total is not None:
                self._progress.advance(self._total, missing)
        self._progress.update(task, status=layer_status(layer))
        self._done += 1
        if layer.error is not None:
            self._failed += 1
        self._update_total_status()

    def retrying(self, what: str, error: PullVerifyError, delay: float) -> None:
        self._progress.console.print(f"{what}: {error.message}; retrying in {delay:.1f}s")

    # -- helpers ----------------------------------------------------------------------------

    def _task(self, layer: LayerResult) -> TaskID | None:
        return self._tasks.get(id(layer))

    def _row_index(self, task: TaskID) -> int:
        for i, row in enumerate(self._progress.tasks):
            if row.id == task:
                return i
        raise KeyError(task)

    def _total_index(self) -> int:
        assert self._total is not None
        return self._row_index(self._total)

    def _update_total_status(self) -> None:
        if self._total is None:
            return
        failed = f", {self._failed} failed" if self._failed else ""
        self._progress.update(self._total, status=f"{self._done}/{self._layers} layers{failed}")


@contextmanager
def open_progress(
    fallback: ProgressProtocol, *, terminal: bool, console: Console | None = None
) -> Iterator[ProgressProtocol]:
    """Rich progress when output is a terminal, else ``fallback``; the display is closed after."""
    if not terminal:
        yield fallback
        return
    rich_progress = RichProgress(console)
    try:
        yield rich_progress
    finally:
        rich_progress.close()
