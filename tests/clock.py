"""A fake monotonic clock for unit tests: time moves only when the test says so."""


class FakeClock:
    """Callable like time.monotonic; `advance` moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
