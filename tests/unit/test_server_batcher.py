"""The server's dynamic batcher with a fake forward: caps, waiting, bucketing, deadlines, the queue bound."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from lepton.workloads.server.batcher import Batcher, DeadlineExceededError, Pending, QueueFullError, WithdrawnError


class Recorder:
    """A forward that records each batch's payloads and answers payload * 10 (optionally after a gate)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[Any]] = []
        self.gate = gate
        self.running = 0
        self.overlap = False
        self.threads: set[int] = set()

    def __call__(self, items: Sequence[Pending[Any]]) -> list[Any]:
        self.running += 1
        self.overlap |= self.running > 1
        self.threads.add(threading.get_ident())
        self.batches.append([x.payload for x in items])
        if self.gate is not None:
            self.gate.wait(5)
        for x in items:
            x.emit(("partial", x.payload))
        self.running -= 1
        return [x.payload * 10 for x in items]


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(body())  # type: ignore[arg-type]


def make(forward: Any, **kw: Any) -> Batcher[Any, Any]:
    options = {"max_batch_size": 4, "max_batch_tokens": 10_000, "max_batch_delay": 0.05, "max_queue_length": 64}
    batcher: Batcher[Any, Any] = Batcher(forward, **(options | kw))
    batcher.start()
    return batcher


def test_size_cap_and_results_map_back() -> None:
    rec = Recorder()

    async def body() -> list[Any]:
        b = make(rec, max_batch_size=4)
        items = b.submit([(i, 5) for i in range(10)], timeout=5)
        out = [await x.result() for x in items]
        await b.close()
        return out

    assert run(body) == [i * 10 for i in range(10)]
    assert [len(x) for x in rec.batches] == [4, 4, 2]
    assert sorted(x for b in rec.batches for x in b) == list(range(10))


def test_token_cap_counts_padding() -> None:
    rec = Recorder()

    async def body() -> None:
        b = make(rec, max_batch_size=8, max_batch_tokens=35)
        items = b.submit([(i, 10) for i in range(7)], timeout=5)
        await asyncio.gather(*(x.result() for x in items))
        await b.close()

    run(body)
    assert [len(x) for x in rec.batches] == [3, 3, 1]  # 10 tokens x 3 = 30 <= 35, x 4 = 40 > 35


def test_one_request_over_the_token_cap_still_runs() -> None:
    rec = Recorder()

    async def body() -> Any:
        b = make(rec, max_batch_tokens=8)
        out = await b.submit([(1, 50)], timeout=5)[0].result()
        await b.close()
        return out

    assert run(body) == 10


def test_a_full_queue_does_not_wait_for_the_delay() -> None:
    rec = Recorder()

    async def body() -> float:
        b = make(rec, max_batch_size=4, max_batch_delay=5.0)
        start = time.monotonic()
        items = b.submit([(i, 3) for i in range(4)], timeout=10)
        await asyncio.gather(*(x.result() for x in items))
        elapsed = time.monotonic() - start
        await b.close()
        return elapsed

    assert run(body) < 2.0  # the delay is 5 s; a full batch goes at once
    assert [len(x) for x in rec.batches] == [4]


def test_first_request_waits_at_most_the_delay_and_late_ones_join() -> None:
    rec = Recorder()

    async def body() -> float:
        b = make(rec, max_batch_size=8, max_batch_delay=0.3)
        start = time.monotonic()
        first = b.submit([(1, 3)], timeout=10)
        await asyncio.sleep(0.1)
        second = b.submit([(2, 3)], timeout=10)
        await asyncio.gather(first[0].result(), second[0].result())
        elapsed = time.monotonic() - start
        await b.close()
        return elapsed

    elapsed = run(body)
    assert 0.28 <= elapsed < 2.0
    assert rec.batches == [[1, 2]]


def test_bucketing_groups_nearby_lengths() -> None:
    rec = Recorder()

    async def body() -> None:
        b = make(rec, max_batch_size=3, max_batch_delay=0.05)
        lengths = {1: 10, 2: 100, 3: 11, 4: 99, 5: 12, 6: 98}
        items = b.submit(list(lengths.items()), timeout=5)
        await asyncio.gather(*(x.result() for x in items))
        await b.close()

    run(body)
    assert [sorted(x) for x in rec.batches] == [[1, 3, 5], [2, 4, 6]]


def test_groups_never_share_a_batch() -> None:
    rec = Recorder()

    async def body() -> None:
        b = make(rec, max_batch_size=8)
        a = b.submit([(1, 4), (2, 4)], timeout=5, group="generate")
        e = b.submit([(3, 4), (4, 4)], timeout=5, group="embed")
        await asyncio.gather(*(x.result() for x in a + e))
        await b.close()

    run(body)
    assert sorted(sorted(x) for x in rec.batches) == [[1, 2], [3, 4]]


def test_expired_requests_are_dropped_before_the_forward() -> None:
    gate = threading.Event()
    rec = Recorder(gate)

    async def body() -> tuple[Any, BaseException | None]:
        b = make(rec, max_batch_size=1, max_batch_delay=0)
        busy = b.submit([(1, 3)], timeout=10)
        await asyncio.sleep(0.1)  # the worker now holds request 1 at the gate
        late = b.submit([(2, 3)], timeout=0.2)
        await asyncio.sleep(0.4)
        gate.set()
        error: BaseException | None = None
        try:
            await late[0].result()
        except DeadlineExceededError as exc:
            error = exc
        out = await busy[0].result()
        await asyncio.sleep(0.1)
        await b.close()
        return out, error

    out, error = run(body)
    assert out == 10
    assert isinstance(error, DeadlineExceededError)
    assert rec.batches == [[1]]  # request 2 never reached a forward


def test_result_wait_ends_at_the_deadline_even_while_the_forward_runs() -> None:
    gate = threading.Event()
    rec = Recorder(gate)

    async def body() -> float:
        b = make(rec, max_batch_delay=0)
        item = b.submit([(1, 3)], timeout=0.3)[0]
        start = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            await item.result()
        elapsed = time.monotonic() - start
        assert item.cancelled and not item.alive()  # the forward can see it and stop early
        gate.set()
        await b.close()
        return elapsed

    assert run(body) < 1.5


def test_queue_full_is_all_or_nothing() -> None:
    gate = threading.Event()
    rec = Recorder(gate)

    async def body() -> None:
        b = make(rec, max_batch_size=1, max_batch_delay=0, max_queue_length=3)
        first = b.submit([(1, 3)], timeout=10)
        await asyncio.sleep(0.1)  # taken by the worker: the queue is empty again
        queued = b.submit([(2, 3), (3, 3)], timeout=10)
        with pytest.raises(QueueFullError):
            b.submit([(4, 3), (5, 3)], timeout=10)
        assert b.depth == 2  # neither of the refused pair was queued
        queued += b.submit([(6, 3)], timeout=10)
        with pytest.raises(QueueFullError):
            b.submit([(7, 3)], timeout=10)
        gate.set()
        assert [await x.result() for x in first + queued] == [10, 20, 30, 60]
        await b.close()

    run(body)
    assert sorted(x for b in rec.batches for x in b) == [1, 2, 3, 6]


def test_cancelled_requests_are_dropped_and_free_their_place() -> None:
    gate = threading.Event()
    rec = Recorder(gate)

    async def body() -> None:
        b = make(rec, max_batch_size=1, max_batch_delay=0, max_queue_length=1)
        first = b.submit([(1, 3)], timeout=10)
        await asyncio.sleep(0.1)
        gone = b.submit([(2, 3)], timeout=10)[0]
        gone.cancel()
        again = b.submit([(3, 3)], timeout=10)  # the withdrawn one no longer counts
        with pytest.raises(WithdrawnError):
            await gone.result()
        gate.set()
        assert await first[0].result() == 10
        assert await again[0].result() == 30
        await b.close()

    run(body)
    assert rec.batches == [[1], [3]]


def test_partial_results_stream_before_the_result() -> None:
    rec = Recorder()

    async def body() -> list[Any]:
        b = make(rec)
        item = b.submit([(7, 3)], timeout=5)[0]
        seen = [x async for x in item.events()]
        out = await item.result()
        await b.close()
        return [*seen, out]

    assert run(body) == [("partial", 7), 70]


def test_forward_errors_reach_every_request_and_the_batcher_goes_on() -> None:
    calls: list[int] = []

    def forward(items: Sequence[Pending[Any]]) -> list[Any]:
        calls.append(len(items))
        if len(calls) == 1:
            raise ValueError("boom")
        return [x.payload for x in items]

    async def body() -> Any:
        b = make(forward, max_batch_size=2)
        failing = b.submit([(1, 3), (2, 3)], timeout=5)
        for x in failing:
            with pytest.raises(ValueError, match="boom"):
                await x.result()
        out = await b.submit([(3, 3)], timeout=5)[0].result()
        await b.close()
        return out

    assert run(body) == 3


def test_forwards_run_one_at_a_time_on_one_thread() -> None:
    rec = Recorder()

    def slow(items: Sequence[Pending[Any]]) -> list[Any]:
        rec.running += 1
        rec.overlap |= rec.running > 1
        rec.threads.add(threading.get_ident())
        rec.batches.append([x.payload for x in items])
        time.sleep(0.01)
        rec.running -= 1
        return [x.payload for x in items]

    async def body() -> None:
        b = make(slow, max_batch_size=2, max_batch_delay=0)
        items: list[Pending[Any]] = []
        for i in range(12):
            items += b.submit([(i, 3)], timeout=5)
            await asyncio.sleep(0.003)
        await asyncio.gather(*(x.result() for x in items))
        await b.close()

    run(body)
    assert not rec.overlap
    assert len(rec.threads) == 1
    assert sorted(x for b in rec.batches for x in b) == list(range(12))
