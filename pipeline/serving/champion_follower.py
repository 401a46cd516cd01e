"""The champion, followed: the server answers with `models:/<name>@champion` as the registry names it now, within
`poll_seconds` of a promotion or `make rollback`, without a restart and without failing a request in flight.

A thread asks the registry every `poll_seconds`. When the alias names another version, its weights are fetched
into the weights cache the stages share (registry.cached_weights) and loaded by the engine (`load`), off the event
loop, while the old version keeps serving. Then the switch: requests that arrive meanwhile wait (they are not
failed) until the old version's requests in flight have finished (at most `drain_seconds`), new requests go to the
new version, and the old one is unloaded (`unload`). Waiting matters for continuous batching: its scheduler serves
one model, and starting the new one stops the old one's. A version that cannot be fetched or loaded leaves the old
one serving, the log says why, and the next poll tries again; a registry that cannot be asked is logged, never taken
as "no champion": what serves keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline.storage import outputs
from pipeline.tracking import registry

log = logging.getLogger(__name__)


class NoChampion(RuntimeError):
    """Nothing is promoted yet (or nothing could be loaded): there is no model to answer with."""


@dataclass(frozen=True)
class Served:
    """One registered version, loaded."""

    name: str
    version: str
    path: Path  # its weights directory (Hugging Face layout)
    system_prompt: str | None  # the one it was trained with, given to requests that bring none

    @property
    def model_id(self) -> str:
        return f"{self.name}/{self.version}"


class ChampionFollower:
    def __init__(self, name: str, cache_root: Path, load: Callable[[Path], None], unload: Callable[[Path], None],
                 poll_seconds: float = 10.0, drain_seconds: float = 120.0):
        self.name, self.cache_root = name, Path(cache_root)
        self._load, self._unload = load, unload
        self.poll_seconds, self.drain_seconds = poll_seconds, drain_seconds
        self._current: Served | None = None
        self._in_flight: Counter = Counter()
        self._switching = False
        self._changed: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self.last_error: str | None = None

    @property
    def current(self) -> Served | None:
        return self._current

    async def start(self) -> threading.Thread:
        """Follow the alias for the running event loop; the champion of now is loaded before this returns."""
        self._loop, self._changed = asyncio.get_running_loop(), asyncio.Condition()
        await asyncio.to_thread(self.poll)  # in a thread: the switch it ends with runs on this loop
        thread = threading.Thread(target=self._follow, name="champion-follower", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.poll()

    def poll(self) -> Served | None:
        """Ask the registry once; fetch, load and switch to a new champion. The version now served."""
        try:
            version = registry.champion(MlflowClient(), self.name)
        except registry.RegistryError as exc:
            return self._keep(f"cannot ask the registry: {exc}")
        if version is None or (self._current is not None and str(version.version) == self._current.version):
            return self._current
        try:
            path = registry.cached_weights(self.name, version.version, self.cache_root / ".weights")
            prompt = outputs.train_config(path).get("train.system_prompt")
            self._load(path)
        except Exception as exc:
            return self._keep(f"models:/{self.name}/{version.version} failed to load: {type(exc).__name__}: {exc}")
        new = Served(self.name, str(version.version), path, prompt)
        old = asyncio.run_coroutine_threadsafe(self._switch(new), self._loop).result()
        log.warning("now serving %s (was %s)", new.model_id, old.model_id if old else "nothing")
        self.last_error = None
        if old is not None and old.path != new.path:
            self._unload(old.path)
        return new

    def _keep(self, reason: str) -> Served | None:
        serving = self._current.model_id if self._current else "nothing"
        if reason != self.last_error:  # once per new reason, not every poll
            log.error("%s; %s keeps serving", reason, serving)
        self.last_error = reason
        return self._current

    async def _switch(self, new: Served) -> Served | None:
        async with self._changed:
            old, self._switching = self._current, True
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: old is None or not self._in_flight[old.version]),
                                       self.drain_seconds)
            except TimeoutError:
                log.error("%s still had %d requests in flight after %.0f s; switching anyway", old.model_id,
                          self._in_flight[old.version], self.drain_seconds)
            self._current, self._switching = new, False
            self._changed.notify_all()
        return old

    async def acquire(self) -> Served:
        """The version to answer a request with, held until `release`; waits while a switch drains."""
        async with self._changed:
            await self._changed.wait_for(lambda: not self._switching)
            if self._current is None:
                raise NoChampion(f"no champion for {self.name!r} yet"
                                 + (f" ({self.last_error})" if self.last_error else ": run `make run` first"))
            self._in_flight[self._current.version] += 1
            return self._current

    async def release(self, served: Served) -> None:
        async with self._changed:
            self._in_flight[served.version] -= 1
            self._changed.notify_all()
