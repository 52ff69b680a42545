"""The agent's dynamic config: follow the `current` pointers of its scopes in etcd, validate,
merge (bootstrap < fleet < groups < host) and hot-apply; keep the last good on disk.

A version that fails validation (bad TOML, a bad field, a corrupt value written straight into
etcd) is rejected as a whole: nothing of it is applied, the last good config stays in force,
and the rejection is reported in the heartbeat and as an event. On start the agent applies
its last good config from disk first, so it runs with it while etcd is unreachable.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from hidsd.agent.follow import Follower, FollowStore
from hidsd.base.errors import ConfigError, ProtocolError
from hidsd.base.files import write_atomic
from hidsd.base.storage import StorageHealth
from hidsd.bus.store import WatchEvent
from hidsd.wire import dynconfig
from hidsd.wire.configstore import decode_config_pointer, decode_config_version
from hidsd.wire.heartbeat import ConfigRejection, ConfigReport
from hidsd.wire.names import KeyLayout

LAST_GOOD_FILE = "config-last-good.json"

Apply = Callable[[dict[str, Any]], None]
Report = Callable[[dict[str, Any]], Awaitable[None]]


class Rejected(Exception):
    def __init__(self, scope: str, version: int | None, error: str) -> None:
        super().__init__(error)
        self.scope = scope
        self.version = version
        self.error = error


class ConfigService:
    """Hot reload of the agent's dynamic config from etcd."""

    def __init__(
        self,
        store: FollowStore,
        keys: KeyLayout,
        host: str,
        groups: tuple[str, ...],
        data_dir: Path,
        base: dict[str, Any],
        on_apply: Apply,
        on_reject: Report,
        period_s: Callable[[], float],
        watch: bool = True,
        on_status: Callable[[], None] | None = None,
    ) -> None:
        self.on_status = on_status
        self._lock = asyncio.Lock()
        self._requested = 0
        self._covered = 0
        self._last_revision = 0
        self.store = store
        self.keys = keys
        self.scopes = keys.config_applicable(host, groups)
        self.labels = [keys.scope_label(s, t) for s, t in self.scopes]
        self.pointer_keys = [keys.config_current(s, t) for s, t in self.scopes]
        self.path = data_dir / LAST_GOOD_FILE
        #: set by the agent: where a failed save of the last-good file is reported
        self.health: StorageHealth | None = None
        self._unsaved: list[tuple[str, str]] | None = None
        self.base = base
        self.on_apply = on_apply
        self.on_reject = on_reject
        self.versions: dict[str, int] = {}
        self.effective, _ = dynconfig.merge([("bootstrap", base)])
        self.fingerprint = dynconfig.fingerprint(self.effective)
        self.status = "bootstrap"
        self.error = ""
        self.rejected: dict[str, Any] | None = None
        self.rejections = 0
        self._reported: tuple[str, int | None, str] | None = None
        self.log: Any = structlog.get_logger("hidsd.config").bind(host=host)
        self.follower = Follower(
            store, self.pointer_keys, self._resync, self._on_events, period_s, self.log,
            watch=watch,
        )  # fmt: skip

    # ------------------------------------------------------------------ reporting

    def report(self) -> ConfigReport:
        r = self.rejected
        return ConfigReport(
            versions=dict(self.versions),
            fingerprint=self.fingerprint,
            status=self.status,
            error=self.error or "",
            rejected=None if r is None else ConfigRejection(r["scope"], r["version"], r["error"]),
        )

    # ------------------------------------------------------------------ last good

    def load_last_good(self) -> None:
        """Apply the config saved by the last successful apply (before etcd is reachable)."""
        try:
            saved = json.loads(self.path.read_text())
            layers = [(label, dynconfig.parse(text)) for label, text in saved["layers"]]
            versions = {str(k): int(v) for k, v in saved["versions"].items()}
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError, ConfigError, OSError) as exc:
            self.log.error("last_good_config_unreadable", path=str(self.path), error=str(exc))
            return
        self._apply(layers, versions, "last_good")

    def _save_last_good(self, texts: list[tuple[str, str]]) -> bool:
        """Atomic replace; a failure is reported and kept for `retry_last_good`."""
        data = json.dumps({"versions": self.versions, "layers": texts}).encode()
        try:
            write_atomic(self.path, data)
        except OSError as exc:
            if self._unsaved is None:
                self.log.error("last_good_config_not_saved", path=str(self.path), error=str(exc))
            self._unsaved = texts
            if self.health is not None:
                self.health.failed("last_good", self.path, exc, retried=True)
            return False
        if self._unsaved is not None:
            self.log.info("last_good_config_saved", path=str(self.path))
        self._unsaved = None
        if self.health is not None:
            self.health.ok("last_good")
        return True

    def retry_last_good(self) -> bool:
        """Write a last-good save that failed (called periodically); True when none is owed."""
        return self._unsaved is None or self._save_last_good(self._unsaved)

    # ------------------------------------------------------------------ follow etcd

    async def _on_events(self, events: list[WatchEvent]) -> None:
        del events  # a pointer moved: re-read every scope at one revision
        await self.resync("watch")

    async def _resync(self, why: str) -> int:
        return await self.resync(why)

    async def resync(self, why: str) -> int:
        """Read pointers and versions; apply or reject. Returns the pointers' revision.

        Serialized: two overlapping resyncs could finish out of order and apply an older
        snapshot. A request made while one runs is covered by the next run (or by a run that
        started after it), so bursts of watch events cost one read, not one each.
        """
        self._requested += 1
        mine = self._requested
        async with self._lock:
            if self._covered >= mine:
                return self._last_revision
            upto = self._requested
            revision = await self._resync_locked(why)
            self._covered = upto
            self._last_revision = revision
            return revision

    async def _resync_locked(self, why: str) -> int:
        kvs, revision = await self.store.get_many(self.pointer_keys)
        by_key = {kv.key: kv for kv in kvs}
        wanted: dict[str, tuple[int, str]] = {}
        try:
            for label, key in zip(self.labels, self.pointer_keys, strict=True):
                if key in by_key:
                    try:
                        wanted[label] = decode_config_pointer(by_key[key].value)
                    except ProtocolError as exc:
                        raise Rejected(label, None, exc.message) from exc
            version_keys = {
                label: self.keys.config_version(s, t, wanted[label][0])
                for (s, t), label in zip(self.scopes, self.labels, strict=True)
                if label in wanted
            }
            if [wanted.get(label, (0, ""))[0] for label in self.labels] == [
                self.versions.get(label, 0) for label in self.labels
            ] and self.status == "ok":
                return revision  # nothing moved since the last apply (or rejection)
            vkvs, _ = await self.store.get_many(list(version_keys.values()))
            contents = {kv.key: kv.value for kv in vkvs}
            layers: list[tuple[str, dict[str, Any]]] = []
            texts: list[tuple[str, str]] = []
            for label in self.labels:
                if label not in wanted:
                    continue
                version, digest = wanted[label]
                raw = contents.get(version_keys[label])
                if raw is None:
                    raise Rejected(label, version, f"version {version} is missing from etcd")
                try:
                    cv = decode_config_version(raw)
                except ProtocolError as exc:
                    raise Rejected(label, version, exc.message) from exc
                if cv.version != version or dynconfig.digest(cv.content) != digest:
                    raise Rejected(label, version, "content does not match its digest")
                try:
                    layers.append((label, dynconfig.parse(cv.content)))
                except ConfigError as exc:
                    raise Rejected(label, version, exc.message) from exc
                texts.append((label, cv.content))
            merged, _ = dynconfig.merge([("bootstrap", self.base), *layers])
            try:
                dynconfig.check_effective(merged)
            except ConfigError as exc:
                # rules across fields hold for the merge; blame the most specific layer in it
                label = next((lb for lb, layer in reversed(layers) if "breaker" in layer),
                             layers[-1][0] if layers else "bootstrap")  # fmt: skip
                raise Rejected(label, wanted.get(label, (None, ""))[0],
                               f"merged config: {exc.message}") from exc  # fmt: skip
        except Rejected as rej:
            await self._reject(rej)
            return revision
        self._apply(layers, {label: wanted[label][0] for label in wanted}, "ok", why)
        self._save_last_good(texts)
        return revision

    def _apply(
        self,
        layers: list[tuple[str, dict[str, Any]]],
        versions: dict[str, int],
        status: str,
        why: str = "disk",
    ) -> None:
        effective, _ = dynconfig.merge([("bootstrap", self.base), *layers])
        fingerprint = dynconfig.fingerprint(effective)
        changed = fingerprint != self.fingerprint
        self.effective, self.fingerprint, self.versions = effective, fingerprint, versions
        self.status, self.error, self.rejected, self._reported = status, "", None, None
        self.log.info("config_applied", versions=versions, fingerprint=fingerprint, why=why,
                      changed=changed)  # fmt: skip
        if changed:
            self.on_apply(effective)
        if self.on_status is not None:
            self.on_status()  # report the new versions now, even if nothing else changed

    async def _reject(self, rej: Rejected) -> None:
        self.status = "rejected"
        self.error = rej.error
        self.rejected = {"scope": rej.scope, "version": rej.version, "error": rej.error}
        key = (rej.scope, rej.version, rej.error)
        if key == self._reported:
            return  # already logged and reported this one
        self._reported = key
        self.rejections += 1
        if self.on_status is not None:
            self.on_status()
        self.log.error("config_rejected", scope=rej.scope, version=rej.version,
                       error=rej.error, kept=self.versions)  # fmt: skip
        await self.on_reject({"kind": "config_rejected", **self.rejected, "kept": self.versions})

    async def run(self) -> None:
        await self.follower.run()
