"""A daemon thread calling a check function every few seconds until stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Poller:
    def __init__(self, check: Callable[[], object], interval_s: float, name: str) -> None:
        self.check = check
        self.interval_s = interval_s
        self.name = name
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
                self.last_error = None
            except Exception as error:  # keep serving what was loaded last
                self.last_error = f"{type(error).__name__}: {error}"
                log.warning("%s failed: %s", self.name, self.last_error)
