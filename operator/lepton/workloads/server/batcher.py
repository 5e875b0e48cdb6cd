"""Dynamic batching: many concurrent requests, one forward pass at a time.

The shape follows Triton's dynamic batcher and Ray Serve's `@serve.batch`:

- A bounded queue. `submit` refuses work beyond `max_queue_length` (`QueueFullError`, which the HTTP layer
  turns into 429 with Retry-After) instead of letting latency and memory grow without end.
- A batch holds at most `max_batch_size` requests and at most `max_batch_tokens` padded tokens
  (longest length × count, what the forward really computes). A single request always fits: the
  contract guarantees `maxBatchTokens >= maxInputTokens`, and refusing it here would starve it.
- The first request of a batch waits at most `max_batch_delay` for company, and not at all when the
  queue already holds a full batch (opportunistic): under load there is no added latency, at low load
  at most the delay.
- Bucketing by length: the oldest request anchors the batch (no starvation); its companions are the
  queued requests of the same group whose lengths are nearest to it, which limits padding.
- Deadlines: a request whose deadline passed is dropped before it reaches a forward (`DeadlineExceededError`,
  504); one whose caller went away (`cancel`) is dropped silently.
- Forwards run in ONE worker thread (`Worker`): torch releases the GIL inside its kernels, so the event
  loop keeps accepting, parsing and streaming while the model computes, and forwards never overlap.

The batcher is generic over the forward callable (`Forward`), so it is tested without torch. A forward
gets the batch's `Pending` items, returns one result per item, and may stream partial results to an
item with `Pending.emit` (generation sends tokens as they are produced).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

P = TypeVar("P")
R = TypeVar("R")
T = TypeVar("T")
log = logging.getLogger("lepton.server")


class QueueFullError(Exception):
    """The queue holds `max_queue_length` requests already."""


class DeadlineExceededError(Exception):
    """The request's deadline passed before it was answered."""


class WithdrawnError(Exception):
    """The caller withdrew the request."""


class Worker:
    """One daemon thread that runs submitted callables in order. A daemon, so that a process asked to stop
    while a model is still loading (which cannot be interrupted) exits without waiting for it."""

    def __init__(self, name: str = "lepton-forward") -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # the caller gets every failure, the thread lives on
                future.set_exception(exc)

    async def run(self, fn: Callable[[], T]) -> T:
        future: Future[T] = Future()
        self._jobs.put((fn, future))
        return await asyncio.wrap_future(future)

    def stop(self) -> None:
        self._jobs.put(None)


@dataclass(frozen=True)
class _Done:
    result: Any = None
    error: BaseException | None = None


@dataclass(eq=False)
class Pending(Generic[P]):
    """One queued unit of work and the channel its results come back on (created by `Batcher.submit`)."""

    payload: P
    length: int
    deadline: float
    group: str
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    _events: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    _outcome: _Done | None = None

    def alive(self, now: float | None = None) -> bool:
        """Still worth computing: not withdrawn and not past its deadline (read from the worker thread)."""
        return not self.cancelled and (now if now is not None else time.monotonic()) < self.deadline

    def emit(self, item: Any) -> None:
        """Send a partial result to the waiting caller; safe to call from the worker thread."""
        self.loop.call_soon_threadsafe(self._events.put_nowait, item)

    def cancel(self) -> None:
        """The caller gives up: dropped from the queue, or stopped by a forward that checks `alive`."""
        self.cancelled = True

    def _finish(self, done: _Done) -> None:
        self._events.put_nowait(done)

    async def events(self) -> AsyncIterator[Any]:
        """The partial results as they come; ends when the result is in (or raises its error)."""
        while self._outcome is None:
            try:
                item = self._events.get_nowait()
            except asyncio.QueueEmpty:
                remaining = self.deadline - time.monotonic()
                try:
                    item = await asyncio.wait_for(self._events.get(), timeout=max(remaining, 0))
                except TimeoutError:
                    self.cancel()
                    raise DeadlineExceededError("the request's deadline passed") from None
            if isinstance(item, _Done):
                self._outcome = item
            else:
                yield item
        if self._outcome.error is not None:
            raise self._outcome.error

    @property
    def value(self) -> Any:
        """The final result once `events` has ended without an error; None before."""
        return self._outcome.result if self._outcome is not None else None

    async def result(self) -> Any:
        """The final result, skipping partial ones; raises DeadlineExceededError when the deadline passes first."""
        async for _ in self.events():
            pass
        assert self._outcome is not None
        return self._outcome.result


class Observer(Protocol):
    """What the batcher reports (metrics); the default reports nothing."""

    def batch(self, size: int, queue_waits: Sequence[float]) -> None: ...

    def depth(self, queued: int) -> None: ...


class _Silent:
    def batch(self, size: int, queue_waits: Sequence[float]) -> None:
        pass

    def depth(self, queued: int) -> None:
        pass


Forward = Callable[[Sequence[Pending[P]]], Sequence[R]]


class Batcher(Generic[P, R]):
    def __init__(
        self,
        forward: Forward[P, R],
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_batch_delay: float,
        max_queue_length: int,
        worker: Worker | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._forward = forward
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_delay = max_batch_delay
        self.max_queue_length = max_queue_length
        self._worker = worker or Worker()
        self._observer: Observer = observer or _Silent()
        self._queue: list[Pending[P]] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.busy = False  # a forward is running

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="lepton-batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for item in self._queue:
            item._finish(_Done(error=WithdrawnError("the server is shutting down")))
        self._queue.clear()

    def submit(self, payloads: Sequence[tuple[P, int]], timeout: float, group: str = "") -> list[Pending[P]]:
        """Queue (payload, length) pairs all together or none of them (QueueFullError); call on the loop."""
        self._drop_dead()
        if len(self._queue) + len(payloads) > self.max_queue_length:
            raise QueueFullError(f"the queue is full ({self.max_queue_length} requests); retry later")
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        items = [Pending(p, max(length, 1), deadline, group, loop) for p, length in payloads]
        self._queue.extend(items)
        self._observer.depth(len(self._queue))
        self._arrived.set()
        return items

    def _drop_dead(self) -> None:
        now = time.monotonic()
        keep = []
        for item in self._queue:
            if item.cancelled:
                item._finish(_Done(error=WithdrawnError("withdrawn")))
            elif now >= item.deadline:
                item._finish(_Done(error=DeadlineExceededError("the request waited past its deadline in the queue")))
            else:
                keep.append(item)
        if len(keep) != len(self._queue):
            self._queue = keep
            self._observer.depth(len(keep))

    def select(self) -> tuple[list[Pending[P]], bool]:
        """The next batch (anchored on the oldest request, companions nearest in length within its group)
        and whether it is full: at the size cap, or a queued companion was left out by the token cap."""
        if not self._queue:
            return [], False
        anchor = self._queue[0]
        batch, longest, capped = [anchor], anchor.length, False
        others = sorted(
            (x for x in self._queue[1:] if x.group == anchor.group),
            key=lambda x: (abs(x.length - anchor.length), x.enqueued),
        )
        for item in others:
            if len(batch) >= self.max_batch_size:
                return batch, True
            if max(longest, item.length) * (len(batch) + 1) > self.max_batch_tokens:
                capped = True
                continue
            batch.append(item)
            longest = max(longest, item.length)
        return batch, capped or len(batch) >= self.max_batch_size

    async def _run(self) -> None:
        """The scheduling loop. It must not die: a failure is logged and the loop goes on."""
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch scheduling failed; continuing")
                await asyncio.sleep(0.01)

    async def _step(self) -> None:
        """One batch: wait for work, let it fill, run it."""
        await self._arrived.wait()
        self._arrived.clear()
        self._drop_dead()
        if not self._queue:
            return
        await self._fill()
        self._drop_dead()
        batch, _ = self.select()
        if not batch:
            return
        chosen = set(map(id, batch))
        self._queue = [x for x in self._queue if id(x) not in chosen]
        self._observer.depth(len(self._queue))
        if self._queue:
            self._arrived.set()  # the rest goes next, without waiting for another arrival
        await self._execute(batch)

    async def _fill(self) -> None:
        """Wait until the batch is full or the oldest request has waited `max_batch_delay`."""
        until = self._queue[0].enqueued + self.max_batch_delay
        while not self.select()[1]:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=remaining)
            self._drop_dead()
            if not self._queue:
                return
            until = self._queue[0].enqueued + self.max_batch_delay

    async def _execute(self, batch: list[Pending[P]]) -> None:
        now = time.monotonic()
        self._observer.batch(len(batch), [now - x.enqueued for x in batch])
        self.busy = True
        try:
            results = await self._worker.run(lambda: self._forward(batch))
        except Exception as exc:
            for item in batch:
                item._finish(_Done(error=exc))
            return
        finally:
            self.busy = False
        if len(results) != len(batch):
            error = RuntimeError(f"the forward returned {len(results)} results for {len(batch)} requests")
            for item in batch:
                item._finish(_Done(error=error))
            return
        for item, result in zip(batch, results, strict=True):
            item._finish(_Done(result=result))
