"""The embedded snapshot store: the latency table's whole state in one SQLite file (WAL), saved and restored.

One save is one transaction: the file holds either the previous snapshot or the new one, never a mix, so a
`kill -9` loses at most the save in progress (one interval). Each table row is one SQLite row, its RTT window a
BLOB. A file that is not a snapshot this build can read (not SQLite, truncated, a bad checksum, a row that fails
the table's checks, another schema or format version) is renamed aside to `<name>.corrupt-<UTC time>` (its -wal
and -shm follow it), logged and reported; the table is then left as it was: nothing is restored half-way.

Durability: journal_mode=WAL with synchronous=FULL. FULL costs one fsync of the WAL per save, which runs in the
writer thread every few seconds; in exchange a committed save also survives a power loss or an OS crash. NORMAL
would survive `kill -9` just as well but, after a power loss, could roll back every save since the last checkpoint
(several intervals for a table smaller than the 16 MB auto-checkpoint), which breaks the one-interval promise.

Saving from the event loop (the daemon's contract):

    prepared = store.prepare(table, wall_time=time.time(), meta={"config_fingerprint": fp})  # in the loop
    result = await asyncio.to_thread(store.write, prepared)                                  # off the loop

`prepare` copies the table's state (`LatencyTable.export_state`, a few microseconds a row: about 7 ms for 2,100
rows of 256 RTTs) and must run where the table is mutated, so that no sample lands half-way through the copy; the
result owns its data (bytes and tuples), so the table may change at once. `write` does the encoding and all SQLite
I/O; it may run in any thread (its Python part shares the GIL with the loop at the interpreter's switch interval,
SQLite's part releases it), and writes are serialised by a lock: two saves never interleave, a second one waits.
`save_async` does both. A cancelled `save_async` still finishes or rolls back its transaction in the thread: the
file is never left half-written. `load` opens the file read-only; it runs once, at start, before the first save.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sqlite3
import struct
import threading
import time
import zlib
from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from latency_router.decider.table import LatencyTable, RowKey

log = logging.getLogger("latency_router.store")

SCHEMA_VERSION = 1  # the SQLite layout below; a file of another version is set aside, never migrated in place
APPLICATION_ID = 0x4C525453  # "LRTS": marks the file as a latency-router table snapshot (PRAGMA application_id)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    grp TEXT NOT NULL,
    region TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,
    fail_run INTEGER NOT NULL,
    good_run INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    lost INTEGER NOT NULL,
    loss_bits BLOB NOT NULL,
    updated_at REAL,
    next_out INTEGER NOT NULL,
    data BLOB NOT NULL,
    crc INTEGER NOT NULL
);
"""
_COLUMNS = "grp, region, path, state, fail_run, good_run, samples, lost, loss_bits, updated_at, next_out, data, crc"
_INSERT = f"INSERT INTO rows ({_COLUMNS}) VALUES ({', '.join('?' * 13)})"
_SELECT = f"SELECT {_COLUMNS} FROM rows ORDER BY rowid"

# data: little-endian float64 w_sum, w_total, jitter, ewma_at, then the RTT ring (its oldest at next_out once full).
_HEAD = struct.Struct("<4d")

# SQLite primary result codes: the file's content is bad; the file could not be reached (no permission, busy,
# locked, out of memory, read-only, I/O error, disk full, cannot open, not authorised).
_CORRUPT_CODES = frozenset({11, 26})
_ENVIRONMENT_CODES = frozenset({3, 5, 6, 7, 8, 10, 13, 14, 23})
_BUSY_TIMEOUT_S = 5.0
_PAGE_SIZE = 65536
_AUTOCHECKPOINT_BYTES = 16 << 20  # copy the WAL into the file once it holds this much


class StoreError(Exception):
    """A snapshot could not be written (disk full, no permission, a lock held too long); the message names the file."""


@dataclass(frozen=True, slots=True)
class PreparedSnapshot:
    """A table's state copied in the event loop, ready for write() in another thread; it shares nothing with it."""

    state: Mapping[str, Any]  # LatencyTable.export_state()
    wall_time: float  # when the state was taken, seconds since the epoch
    meta_json: str  # the caller's meta (e.g. the config fingerprint), as saved
    export_s: float  # how long the copy took in the loop


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What one save wrote and how long it took; set_aside and problem name an unusable file found in the way."""

    rows: int
    data_bytes: int  # BLOB bytes written (windows and their heads)
    export_s: float  # the copy in the loop (prepare)
    write_s: float  # encoding, SQLite and fsync, off the loop (write)
    problem: str | None = None
    set_aside: Path | None = None


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What a load restored: rows restored and dropped by `keep`, the snapshot's age, or the problem that stopped it."""

    restored: int = 0
    dropped: int = 0  # rows the snapshot held that `keep` refused
    saved_at: float | None = None  # wall time of the save
    age_s: float | None = None  # how old the snapshot was when loaded (negative if the clock went back)
    problem: str | None = None  # None: a good snapshot, or no file at all
    set_aside: Path | None = None  # where an unusable file was moved
    meta: Mapping[str, Any] = field(default_factory=dict)  # the caller's meta as saved
    seconds: float = 0.0


class _Unusable(Exception):
    """The file is not a snapshot this build can read: set it aside."""


def _row_crc(grp: Any, region: Any, path: Any, state: Any, fail_run: Any, good_run: Any, samples: Any, lost: Any,
             loss_bits: bytes, updated_at: float | None, next_out: Any, data: bytes) -> int:
    text = f"{grp}\0{region}\0{path}\0{state}\0{fail_run}\0{good_run}\0{samples}\0{lost}\0{updated_at!r}\0{next_out}"
    return zlib.crc32(data, zlib.crc32(loss_bits, zlib.crc32(text.encode("utf-8", "surrogatepass"))))


def _encode(rows: list[tuple[Any, ...]], swap: bool, sizes: list[int]) -> Iterator[tuple[Any, ...]]:
    """SQLite rows from export_state() rows; adds each BLOB's size to sizes[0]."""
    head = _HEAD.pack
    total = 0
    for (grp, region, path, state, fail_run, good_run, samples, lost, bits, updated_at, ewma_at, w_sum, w_total,
         jitter, window, next_out) in rows:
        if swap:
            ring = array("d")
            ring.frombytes(window)
            ring.byteswap()
            window = ring.tobytes()
        data = head(w_sum, w_total, jitter, ewma_at) + window
        loss_bits = bits.to_bytes((bits.bit_length() + 7) // 8, "little")
        if updated_at is not None:
            updated_at += 0.0  # SQLite keeps no -0.0, and the checksum must match what comes back
        total += len(data) + len(loss_bits)
        yield (grp, region, path, state, fail_run, good_run, samples, lost, loss_bits, updated_at, next_out, data,
               _row_crc(grp, region, path, state, fail_run, good_run, samples, lost, loss_bits, updated_at,
                        next_out, data))
    sizes[0] = total


def _decode(i: int, record: tuple[Any, ...]) -> tuple[Any, ...]:
    """One SQLite row back to an export_state() row; _Unusable names the row when its bytes do not hold together."""
    (grp, region, path, state, fail_run, good_run, samples, lost, loss_bits, updated_at, next_out, data,
     crc) = record
    where = f"row {i + 1} ({grp}, {region}, {path})"
    if not isinstance(loss_bits, bytes) or not isinstance(data, bytes) or len(data) < _HEAD.size:
        raise _Unusable(f"{where}: loss_bits and data must be BLOBs, data at least {_HEAD.size} bytes")
    if not (updated_at is None or isinstance(updated_at, float)):
        raise _Unusable(f"{where}: updated_at must be REAL or NULL, got {type(updated_at).__name__}")
    if crc != _row_crc(grp, region, path, state, fail_run, good_run, samples, lost, loss_bits, updated_at, next_out,
                       data):
        raise _Unusable(f"{where}: checksum mismatch")
    w_sum, w_total, jitter, ewma_at = _HEAD.unpack_from(data)
    return (grp, region, path, state, fail_run, good_run, samples, lost, int.from_bytes(loss_bits, "little"),
            updated_at, ewma_at, w_sum, w_total, jitter, data[_HEAD.size:], next_out)


def _sqlite_code(exc: sqlite3.Error) -> int:
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary result code


def _utc_stamp(wall_time: float) -> str:
    return datetime.fromtimestamp(wall_time, timezone.utc).strftime("%Y%m%dT%H%M%SZ")


class SnapshotStore:
    """The latency table's snapshots in one SQLite file: save() and write() replace it whole, load() restores it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the file _conn has open

    # -- saving --------------------------------------------------------------------------------------------------

    def prepare(self, table: LatencyTable, *, wall_time: float, meta: Mapping[str, Any] | None = None
                ) -> PreparedSnapshot:
        """Copy the table's state (fast; call it where the table is mutated, e.g. in the event loop)."""
        if isinstance(wall_time, bool) or not isinstance(wall_time, (int, float)) or not math.isfinite(wall_time):
            raise ValueError(f"wall_time: expected finite seconds since the epoch, got {wall_time!r}")
        try:
            meta_json = json.dumps(dict(meta or {}), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"meta: must be a JSON object of plain values ({exc})") from None
        started = time.perf_counter()
        state = table.export_state()
        return PreparedSnapshot(state, float(wall_time), meta_json, time.perf_counter() - started)

    def write(self, prepared: PreparedSnapshot) -> SaveResult:
        """Write a prepared snapshot in one transaction (any thread); StoreError when the file cannot be written."""
        with self._lock:
            started = time.perf_counter()
            problem: str | None = None
            aside: Path | None = None
            for attempt in (1, 2):
                try:
                    rows, size = self._write(prepared)
                    break
                except _Unusable as exc:
                    problem, aside = self._set_aside(str(exc), prepared.wall_time, "before saving")
                except sqlite3.Error as exc:
                    if _sqlite_code(exc) not in _CORRUPT_CODES or attempt == 2:
                        self._close()
                        raise StoreError(f"{self.path}: cannot write the snapshot: {exc}") from exc
                    problem, aside = self._set_aside(str(exc), prepared.wall_time, "before saving")
            else:  # the fresh file that replaced the unusable one was unusable too
                raise StoreError(f"{self.path}: a freshly created snapshot file was unusable: {problem}")
            return SaveResult(rows, size, prepared.export_s, time.perf_counter() - started, problem, aside)

    def save(self, table: LatencyTable, *, wall_time: float, meta: Mapping[str, Any] | None = None) -> SaveResult:
        """prepare() then write() in this thread: for shutdown, tests and tools."""
        return self.write(self.prepare(table, wall_time=wall_time, meta=meta))

    async def save_async(self, table: LatencyTable, *, wall_time: float, meta: Mapping[str, Any] | None = None
                         ) -> SaveResult:
        """prepare() in the running loop, then write() in a worker thread."""
        prepared = self.prepare(table, wall_time=wall_time, meta=meta)
        return await asyncio.to_thread(self.write, prepared)

    def close(self) -> None:
        """Close the file (checkpointing the WAL into it); a later save opens it again."""
        with self._lock:
            self._close()

    def __enter__(self) -> "SnapshotStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close(self) -> None:
        conn, self._conn, self._file_id = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:  # closing a broken file must not hide why it broke
                log.warning("closing snapshot %s: %s", self.path, exc)

    def _writer(self) -> sqlite3.Connection:
        """The open connection, reopened when the file was moved or deleted under it; the schema in place."""
        if self._conn is not None:
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._file_id:
                    return self._conn
            except FileNotFoundError:
                pass
            self._close()
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables or app_id or version:
                _check_identity(app_id, version, tables)
            if not tables:
                # Big pages: a row (about 2 KB at 256 RTTs) would fill half of a 4 KB page; 64 KB pages waste little
                # and halve the time a whole-table save takes.
                conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                log.warning("snapshot %s: journal_mode is %s, the filesystem refused WAL", self.path, mode)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_BYTES // _PAGE_SIZE}")
            if not tables:
                conn.executescript(
                    f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA application_id={APPLICATION_ID};"
                    f" PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
                )
        except BaseException:
            conn.close()
            raise
        st = os.stat(self.path)
        self._conn, self._file_id = conn, (st.st_dev, st.st_ino)
        return conn

    def _write(self, prepared: PreparedSnapshot) -> tuple[int, int]:
        conn = self._writer()
        state = prepared.state
        rows = state["rows"]
        sizes = [0]
        swap = state["byteorder"] != "little"  # the file holds little-endian float64
        meta = {
            "schema_version": str(SCHEMA_VERSION),
            "format": str(state["format"]),
            "window_samples": str(state["window_samples"]),
            "saved_at": repr(prepared.wall_time),
            "rows": str(len(rows)),
            "meta": prepared.meta_json,
        }
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM rows")
            conn.executemany(_INSERT, _encode(rows, swap, sizes))
            conn.execute("DELETE FROM meta")
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # the error that stopped the save is the one to report
                    conn.execute("ROLLBACK")
            raise
        return len(rows), sizes[0]

    # -- loading -------------------------------------------------------------------------------------------------

    def load(self, table: LatencyTable, *, keep: Callable[[RowKey], bool] | None = None,
             wall_time: float | None = None) -> LoadResult:
        """Restore the table from the file (rows `keep` accepts); a missing file restores nothing and is no problem."""
        if wall_time is not None and not math.isfinite(wall_time):
            raise ValueError(f"wall_time: expected finite seconds since the epoch, got {wall_time!r}")
        with self._lock:
            started = time.perf_counter()
            now = time.time() if wall_time is None else wall_time
            self._close()
            if not self.path.exists():
                return LoadResult(seconds=time.perf_counter() - started)
            try:
                state, saved_at, meta = self._read()
            except _Unusable as exc:
                problem, aside = self._set_aside(str(exc), now, "at load")
                return LoadResult(problem=problem, set_aside=aside, seconds=time.perf_counter() - started)
            except sqlite3.Error as exc:
                if _sqlite_code(exc) in _ENVIRONMENT_CODES:
                    return self._unreadable(exc, started)
                problem, aside = self._set_aside(str(exc), now, "at load")
                return LoadResult(problem=problem, set_aside=aside, seconds=time.perf_counter() - started)
            if state is None:  # an empty SQLite file: a first save was cut short before it created anything
                return LoadResult(seconds=time.perf_counter() - started)
            total = len(state["rows"])
            try:
                restored = table.restore_state(state, keep=keep)
            except ValueError as exc:
                problem, aside = self._set_aside(f"the table refused it: {exc}", now, "at load")
                return LoadResult(problem=problem, set_aside=aside, seconds=time.perf_counter() - started)
            age = now - saved_at
            log.info("restored %d of %d rows from snapshot %s saved %.1f s ago", restored, total, self.path, age)
            return LoadResult(restored=restored, dropped=total - restored, saved_at=saved_at, age_s=age, meta=meta,
                              seconds=time.perf_counter() - started)

    def _unreadable(self, exc: sqlite3.Error, started: float) -> LoadResult:
        problem = f"{self.path}: cannot read the snapshot ({exc}); left in place, starting with an empty table"
        log.error("%s", problem)
        return LoadResult(problem=problem, seconds=time.perf_counter() - started)

    def _read(self) -> tuple[dict[str, Any] | None, float, dict[str, Any]]:
        """The file's export_state() form, its save time and the caller's meta; _Unusable says what is wrong."""
        # Read-only: SQLite would otherwise delete a -wal it finds beside a file it cannot use (the evidence).
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables and app_id == 0 and version == 0:
                return None, 0.0, {}
            _check_identity(app_id, version, tables)
            checked = conn.execute("PRAGMA quick_check(3)").fetchall()
            if checked != [("ok",)]:
                raise _Unusable("integrity check failed: " + "; ".join(str(m) for (m,) in checked))
            conn.execute("BEGIN")  # one read transaction: meta and rows from the same save
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            try:
                saved_at = float(meta["saved_at"])
                count = int(meta["rows"])
                window_samples = int(meta["window_samples"])
                fmt = int(meta["format"])
                caller_meta = json.loads(meta.get("meta", "{}"))
            except (KeyError, ValueError, TypeError) as exc:
                raise _Unusable(f"meta: missing or malformed {exc}") from None
            if not math.isfinite(saved_at) or not isinstance(caller_meta, dict):
                raise _Unusable("meta: saved_at must be a finite time and meta a JSON object")
            rows = [_decode(i, record) for i, record in enumerate(conn.execute(_SELECT))]
            conn.execute("COMMIT")
        finally:
            conn.close()
        if len(rows) != count:
            raise _Unusable(f"{len(rows)} rows where the save wrote {count}")
        state = {"format": fmt, "window_samples": window_samples, "byteorder": "little", "rows": rows}
        return state, saved_at, caller_meta

    def _set_aside(self, what: str, wall_time: float, when: str) -> tuple[str, Path | None]:
        """Move the file and its -wal/-shm to <name>.corrupt-<UTC time>; returns the problem in words and where."""
        self._close()
        stamp = _utc_stamp(wall_time if math.isfinite(wall_time) else time.time())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for n in range(1, 1000):
            if not any(Path(f"{aside}{s}").exists() for s in ("", "-wal", "-shm")):
                break
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            for suffix in ("-wal", "-shm", ""):  # the main file last: a crash in between leaves it where it was
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    os.replace(source, f"{aside}{suffix}")
        except OSError as exc:
            problem = f"{self.path}: unusable snapshot ({what}), and moving it aside failed: {exc}"
            log.error("%s; starting with an empty table", problem)
            return problem, None
        problem = f"{self.path}: unusable snapshot {when} ({what}); moved aside to {aside}"
        log.warning("%s; starting with an empty table", problem)
        return problem, aside


def _check_identity(app_id: int, version: int, tables: set[str]) -> None:
    """_Unusable unless the file is a latency-router snapshot of this schema version."""
    if app_id != APPLICATION_ID:
        raise _Unusable(f"not a latency-router snapshot (application_id {app_id:#x}, expected {APPLICATION_ID:#x})")
    if version != SCHEMA_VERSION:
        raise _Unusable(f"incompatible schema version {version}, this build reads version {SCHEMA_VERSION}")
    if not {"meta", "rows"} <= tables:
        raise _Unusable(f"tables missing: {', '.join(sorted({'meta', 'rows'} - tables))}")
