"""Dynamic batching of concurrent requests, like TF Serving's batching scheduler.

Requests waiting at the same time are merged into one model call: a batch closes when
it holds `max_batch_size` rows or when its oldest request has waited `timeout_ms`,
and at most `num_threads` batches run at once. While every thread is busy, requests
keep queueing, so the next batch is larger: throughput grows with load while a lone
request waits at most `timeout_ms` for company. Only requests with the same key (the
model version, index, ...) share a batch; when a batched call fails, each of its
requests is retried alone, so one request's error never fails another's.

`DirectRunner` has the same interface without batching (one call per request, up to
`num_threads` at once), for `--no-batching` and for comparison. Neither needs
TensorFlow.
"""

import asyncio
import collections
import concurrent.futures
import dataclasses
from typing import Any, Callable, Deque, Dict, Hashable, List, Optional, Sequence, Set, Tuple

# process(key, items) -> one result per item, in order (runs in a worker thread).
Process = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


class OverloadedError(Exception):
    """More rows are queued than the server accepts (answered with HTTP 503)."""


@dataclasses.dataclass
class _Pending:
    key: Hashable
    item: Any
    rows: int
    future: asyncio.Future
    deadline: float


@dataclasses.dataclass
class BatchStats:
    """Counters of a runner: calls made, rows and requests served."""

    calls: int = 0
    requests: int = 0
    rows: int = 0
    max_rows: int = 0

    def as_dict(self) -> Dict[str, float]:
        return {"calls": self.calls, "requests": self.requests, "rows": self.rows,
                "max_rows": self.max_rows,
                "mean_rows": self.rows / self.calls if self.calls else 0.0}


def _run_isolated(process: Process, key: Hashable, items: Sequence[Any]
                  ) -> List[Tuple[bool, Any]]:
    """`(ok, result or exception)` per item; a failed batch is retried item by item."""
    try:
        results = list(process(key, items))
        if len(results) != len(items):
            raise RuntimeError(f"process returned {len(results)} results for "
                               f"{len(items)} items")
        return [(True, result) for result in results]
    except Exception as error:  # noqa: BLE001 - handed to the awaiting request
        if len(items) == 1:
            return [(False, error)]
    return [_run_isolated(process, key, [item])[0] for item in items]


class DirectRunner:
    """Runs each request on its own, up to `num_threads` at once (no batching).

    Args:
        process: `process(key, [item]) -> [result]`, called in a worker thread.
        num_threads: Requests served at once.
        max_queued_rows: Rows waiting or running beyond which `submit` raises
            `OverloadedError` (None: no limit).

    Example:

        runner = DirectRunner(lambda key, items: [len(i) for i in items], num_threads=2)
        result = await runner.submit("model-1", [3, 17, 42], rows=1)  # 3
    """

    def __init__(self, process: Process, num_threads: int = 2,
                 max_queued_rows: Optional[int] = None) -> None:
        self._process = process
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=num_threads, thread_name_prefix="tfrec-serve")
        self._max_queued_rows = max_queued_rows
        self._queued_rows = 0
        self.stats = BatchStats()

    def _admit(self, rows: int) -> None:
        if self._max_queued_rows is not None and \
                self._queued_rows + rows > self._max_queued_rows:
            raise OverloadedError(f"the server is overloaded ({self._queued_rows} rows "
                                  "queued); retry later.")

    async def submit(self, key: Hashable, item: Any, rows: int = 1) -> Any:
        """Runs `process(key, [item])` in a worker thread; returns its result or
        raises its exception."""
        self._admit(rows)
        self._queued_rows += rows
        try:
            loop = asyncio.get_running_loop()
            ok, result = (await loop.run_in_executor(
                self._executor, _run_isolated, self._process, key, [item]))[0]
        finally:
            self._queued_rows -= rows
        self.stats.calls += 1
        self.stats.requests += 1
        self.stats.rows += rows
        self.stats.max_rows = max(self.stats.max_rows, rows)
        if not ok:
            raise result
        return result

    async def close(self) -> None:
        """Waits for running calls and stops the worker threads."""
        self._executor.shutdown(wait=True)


class DynamicBatcher(DirectRunner):
    """Merges concurrent requests with the same key into batched `process` calls.

    Args:
        process: `process(key, items) -> results` (one per item, in order), called in
            a worker thread with every item of one batch.
        max_batch_size: Rows per call at most (a request's rows are never split; a
            request larger than this runs alone).
        timeout_ms: How long the oldest request of a batch waits for more rows.
        num_threads: Batches running at once.
        max_queued_rows: Rows waiting or running beyond which `submit` raises
            `OverloadedError` (None: no limit).

    Example:

        batcher = DynamicBatcher(lambda key, items: [sum(i) for i in items],
                                 max_batch_size=32, timeout_ms=2.0)
        # 8 concurrent submits -> typically one call with all 8 items:
        results = await asyncio.gather(*[batcher.submit("v1", [i], rows=1)
                                         for i in range(8)])
    """

    def __init__(self, process: Process, max_batch_size: int = 64, timeout_ms: float = 2.0,
                 num_threads: int = 2, max_queued_rows: Optional[int] = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if timeout_ms < 0:
            raise ValueError(f"timeout_ms must be >= 0, got {timeout_ms}")
        super().__init__(process, num_threads, max_queued_rows)
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_ms / 1000.0
        self._queue: Deque[_Pending] = collections.deque()
        self._rows_by_key: Dict[Hashable, int] = collections.defaultdict(int)
        self._arrived: Optional[asyncio.Event] = None
        self._slots: Optional[asyncio.Semaphore] = None
        self._num_threads = num_threads
        self._dispatcher: Optional[asyncio.Task] = None
        self._running: Set[asyncio.Task] = set()

    async def submit(self, key: Hashable, item: Any, rows: int = 1) -> Any:
        """Queues `item` for the next batch of `key`; returns its result or raises its
        exception once the batch has run."""
        self._admit(rows)
        loop = asyncio.get_running_loop()
        if self._dispatcher is None:
            self._arrived, self._slots = asyncio.Event(), asyncio.Semaphore(self._num_threads)
            self._dispatcher = loop.create_task(self._dispatch())
        pending = _Pending(key, item, rows, loop.create_future(),
                           loop.time() + self.timeout_s)
        self._queue.append(pending)
        self._rows_by_key[key] += rows
        self._queued_rows += rows
        self._arrived.set()
        try:
            return await pending.future
        finally:
            if not pending.future.done():  # the caller went away: drop it from the queue
                pending.future.cancel()

    async def _dispatch(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                key, batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.get_running_loop().create_task(self._execute(key, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _forget(self, key: Hashable, rows: int) -> None:
        """Rows of `key` leave the queue (a key holds its model: drop it when empty)."""
        self._rows_by_key[key] -= rows
        if self._rows_by_key[key] <= 0:
            del self._rows_by_key[key]

    def _prune(self) -> None:
        """Drops requests whose callers went away from the head of the queue."""
        while self._queue and self._queue[0].future.done():
            dropped = self._queue.popleft()
            self._forget(dropped.key, dropped.rows)
            self._queued_rows -= dropped.rows

    async def _next_batch(self) -> Tuple[Hashable, List[_Pending]]:
        loop = asyncio.get_running_loop()
        while True:
            self._prune()
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            head = self._queue[0]
            wait = head.deadline - loop.time()
            if self._rows_by_key[head.key] >= self.max_batch_size or wait <= 0:
                return head.key, self._take(head.key)
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait)
            except asyncio.TimeoutError:
                pass

    def _take(self, key: Hashable) -> List[_Pending]:
        """The oldest requests of `key`, up to `max_batch_size` rows (at least one)."""
        batch, kept, rows = [], collections.deque(), 0
        for pending in self._queue:
            if pending.future.done():  # cancelled while queued
                self._forget(pending.key, pending.rows)
                self._queued_rows -= pending.rows
            elif pending.key == key and (not batch or rows + pending.rows <= self.max_batch_size):
                batch.append(pending)
                rows += pending.rows
            else:
                kept.append(pending)
        self._queue = kept
        self._forget(key, rows)
        return batch

    async def _execute(self, key: Hashable, batch: List[_Pending]) -> None:
        rows = sum(pending.rows for pending in batch)
        try:
            outcomes = await asyncio.get_running_loop().run_in_executor(
                self._executor, _run_isolated, self._process, key,
                [pending.item for pending in batch])
        except BaseException as error:  # the executor itself failed (shut down)
            outcomes = [(False, error)] * len(batch)
        finally:
            self._slots.release()
            self._queued_rows -= rows
        self.stats.calls += 1
        self.stats.requests += len(batch)
        self.stats.rows += rows
        self.stats.max_rows = max(self.stats.max_rows, rows)
        for pending, (ok, result) in zip(batch, outcomes):
            if pending.future.done():
                continue
            if ok:
                pending.future.set_result(result)
            else:
                pending.future.set_exception(result)

    async def close(self) -> None:
        """Stops dispatching, waits for running batches, fails queued requests."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
            await asyncio.gather(*self._running, return_exceptions=True)
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(OverloadedError("the server is shutting down."))
        self._queue.clear()
        await super().close()
