"""Peak resident memory of this process over a window, for the CPU runs where there is no
`torch.cuda.max_memory_allocated`: a sweep's trials and the Space's training jobs."""

from __future__ import annotations

import threading


class PeakRSS:
    """The process's largest resident memory (MB) between `start()` and `stop()`, sampled by a thread that sleeps
    `interval` seconds between reads. On the CPU, `ru_maxrss` only ever grows, so in a sweep it would carry one
    trial's peak into every later trial."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil  # an accelerate dependency

        self.interval, self.peak = interval, 0
        self._process, self._stop, self._thread = psutil.Process(), threading.Event(), None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def start(self) -> PeakRSS:
        self.peak = self._process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True, name="ft-plugin-peak-rss")
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
        return self.peak / 2**20
