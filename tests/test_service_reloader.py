"""The hot-reload mechanism on its own: swap, refusal that keeps the old content, the refusal
metrics, and a poll that fails (not a refusal) retried by the supervised poller."""

import time

from service.models.reloader import Refusal, Reloader
from service.ops.metrics import ServiceMetrics


class FileNumber(Reloader[int]):
    """Serves the integer written in a file; text that is not an integer is refused."""

    refusable = (ValueError,)

    def __init__(self, path, metrics: ServiceMetrics) -> None:
        super().__init__("number-poller", metrics, metrics.model_refused, metrics.model_refusals, current=0,
                         poll_s=0.02, max_backoff_s=0.05)
        self.path = path
        self.swaps: list[tuple[int, int]] = []
        self.refusals: list[Refusal] = []

    def poll_once(self) -> None:
        text = self.path.read_text()  # a missing file is a failed poll, not a refusal
        if text != str(self.current):
            self.offer(lambda: int(text), version=text)

    def announce_swap(self, previous: int, current: int) -> None:
        self.swaps.append((previous, current))

    def announce_refusal(self, refusal: Refusal) -> None:
        self.refusals.append(refusal)


def sample(metrics: ServiceMetrics, name: str) -> float:
    return metrics.registry.get_sample_value(name)


def test_new_content_is_swapped_in_and_bad_content_refused_while_the_old_keeps_serving(tmp_path):
    metrics = ServiceMetrics()
    number = FileNumber(tmp_path / "n", metrics)
    number.path.write_text("7")
    number.poll_once()
    assert (number.current, number.refused, number.swaps) == (7, None, [(0, 7)])
    number.path.write_text("seven")
    number.poll_once()
    assert number.current == 7 and number.refused.version == "seven" and "invalid literal" in number.refused.reason
    assert number.refusals == [number.refused] and number.swaps == [(0, 7)]
    assert sample(metrics, "shelfbandit_model_refused") == 1.0 and sample(metrics, "shelfbandit_model_refusals_total") == 1.0
    refused = number.refused
    number.path.write_text("8")
    number.poll_once()
    assert (number.current, number.refused, number.swaps[-1]) == (8, None, (7, 8))
    assert sample(metrics, "shelfbandit_model_refused") == 0.0 and sample(metrics, "shelfbandit_model_refusals_total") == 1.0
    number.show_refusal(refused)  # shown again, not counted or announced again
    assert number.refused is refused and number.refusals == [refused] and number.current == 8
    assert sample(metrics, "shelfbandit_model_refused") == 1.0 and sample(metrics, "shelfbandit_model_refusals_total") == 1.0


def test_a_failing_poll_is_retried_by_the_supervised_poller_without_a_refusal(tmp_path):
    metrics = ServiceMetrics()
    number = FileNumber(tmp_path / "n", metrics)
    number.poller.start()
    try:
        deadline = time.monotonic() + 10.0
        while number.poller.failing is None:
            assert time.monotonic() < deadline, "the poller never reported the missing file"
            time.sleep(0.01)
        assert "FileNotFoundError" in number.poller.failing and number.refused is None and number.current == 0
        number.path.write_text("3")
        while number.current != 3 or number.poller.failing is not None:
            assert time.monotonic() < deadline, "the poller never picked the file up"
            time.sleep(0.01)
    finally:
        number.stop()
    assert number.swaps == [(0, 3)] and number.refusals == []
