"""LoopBridge: futures of an event loop settled from other threads, one wake-up per burst."""

import asyncio
import threading

import pytest

from service.loop_bridge import LoopBridge


def test_futures_settled_from_threads_get_their_results_and_errors():
    async def scenario():
        loop = asyncio.get_running_loop()
        bridge = LoopBridge(loop)
        futures = [loop.create_future() for _ in range(200)]

        def settle(part: range) -> None:
            for i in part:
                if i % 7 == 0:
                    bridge.settle(futures[i], error=ValueError(f"no {i}"))
                else:
                    bridge.settle(futures[i], i * 2)

        threads = [threading.Thread(target=settle, args=(range(start, 200, 4),)) for start in range(4)]
        for thread in threads:
            thread.start()
        results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 10)
        for thread in threads:
            thread.join()
        return results

    results = asyncio.run(scenario())
    for i, result in enumerate(results):
        if i % 7 == 0:
            assert isinstance(result, ValueError) and str(result) == f"no {i}"
        else:
            assert result == i * 2


def test_a_burst_costs_one_wake_up_and_a_cancelled_future_is_left_alone():
    async def scenario():
        loop = asyncio.get_running_loop()
        bridge = LoopBridge(loop)
        wake_ups = []
        original = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda callback, *args: (wake_ups.append(callback), original(callback, *args))[1]
        try:
            futures = [loop.create_future() for _ in range(10)]
            futures[3].cancel()
            # settled from another thread while the loop is busy here: one wake-up for all ten
            thread = threading.Thread(target=lambda: [bridge.settle(f, n) for n, f in enumerate(futures)])
            thread.start()
            thread.join()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return len(wake_ups), [f.cancelled() or f.result() for f in futures]
        finally:
            loop.call_soon_threadsafe = original

    wake_ups, outcomes = asyncio.run(scenario())
    assert wake_ups == 1
    assert outcomes == [0, 1, 2, True, 4, 5, 6, 7, 8, 9]


def test_settling_after_the_loop_closed_drops_the_result_quietly():
    loop = asyncio.new_event_loop()
    bridge = LoopBridge(loop)
    future = loop.create_future()
    loop.close()
    bridge.settle(future, 1)  # nobody awaits it any more: no error, nothing kept
    bridge.settle(future, 2)
    assert not future.done()


@pytest.mark.parametrize("n_bursts", [1, 5])
def test_every_burst_is_delivered(n_bursts):
    async def scenario():
        loop = asyncio.get_running_loop()
        bridge = LoopBridge(loop)
        delivered = []
        for burst in range(n_bursts):
            futures = [loop.create_future() for _ in range(3)]
            threading.Thread(target=lambda fs=futures, b=burst: [bridge.settle(f, (b, k)) for k, f in enumerate(fs)]).start()
            delivered.extend(await asyncio.wait_for(asyncio.gather(*futures), 10))
        return delivered

    assert asyncio.run(scenario()) == [(b, k) for b in range(n_bursts) for k in range(3)]
