"""Reporters the tests plug into the runner."""


class InterruptAfter:
    """Raise KeyboardInterrupt after session ``after`` (1-based), as Ctrl-C would mid-run."""

    def __init__(self, after: int):
        self.after = after

    def on_start(self, runner): ...

    def on_session(self, runner, result):
        if result.index + 1 == self.after:
            raise KeyboardInterrupt

    def on_end(self, runner, final): ...
