"""Profile export jobs (Adobe's profile export jobs): what a job is, how its status
moves, and the pure parts of running one. Redis I/O: `traitflow.export_store`; the run
itself: `traitflow.export_run`.

A job exports the served view of every profile of an entity, or of an audience's
members, to an NDJSON file (one view per line) or a Kafka topic (keyed by profile id).
A line is the view as stored (`tf:v:{entity}:{id}`), byte for byte: what the records
API serves for a collection without a field mapping, `_audiences` included.

It walks the views with SCAN ... MATCH ... COUNT and reads each round's with one MGET,
at a pace (`Pacer`), so that its load on Redis is one bounded pair of commands at a
time. Its checkpoint (the SCAN cursor, counts and how many bytes of the file are
written) is saved in Redis after every round, so a job whose process died goes on
from there. How far a SCAN got is read from its cursor (`scan_fraction`), which is
what makes a progress figure possible without counting the profiles first.

Not a snapshot: each profile is exported as it was when its round read it; one
created or deleted meanwhile may or may not be in the export (SCAN's guarantee covers
the keys that exist throughout).

Status: NEW -> PROCESSING -> SUCCEEDED | FAILED; NEW or PROCESSING -> CANCELLED. A
FAILED job may be resumed (PROCESSING again, from its checkpoint).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import orjson

from attributes.errors import InputError, TraitflowError
from traitflow.spread_scan import fraction as walked

NEW, PROCESSING, SUCCEEDED, FAILED, CANCELLED = (
    "NEW",
    "PROCESSING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
)
#: statuses a runner may take a job in (a FAILED one only when resumed on purpose)
RUNNABLE = (NEW, PROCESSING)
FINAL = (SUCCEEDED, FAILED, CANCELLED)

#: a file a job writes is named in the export directory: no path, no hidden file
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: what Kafka accepts as a topic name ("." and ".." are not)
TOPIC_NAME = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._-]{1,249}$")
#: views one round reads at most
MAX_BATCH = 10_000

Destination = Literal["file", "topic"]


class InvalidExport(InputError):
    """An export asked for what cannot be: an unknown entity or audience, a file name
    with a path, a topic name Kafka refuses, a rate or batch out of range. `field`
    names what is wrong."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


class ExportRefused(TraitflowError):
    """A job cannot be run or changed now: unknown, finished, or run by another
    process (its lease is held)."""


@dataclass(frozen=True, slots=True)
class ExportSpec:
    """What to export, where to, and how fast."""

    entity: str
    #: only the members of this audience (of `entity`); None: every profile
    audience: str | None
    destination: Destination
    #: a file name in the export directory, or a topic
    target: str
    #: views read per second, at most
    rate_per_s: float
    #: views per round (one MGET, one write, one checkpoint), and the keys each SCAN
    #: visits (its COUNT)
    batch: int

    def check(self, entities: Iterable[str], audiences: Mapping[str, str]) -> ExportSpec:
        """Itself, if it can be run with these entities and audiences (name -> entity);
        else `InvalidExport` naming the field."""
        known = list(entities)
        if self.entity not in known:
            raise InvalidExport("entity", f"unknown entity {self.entity!r} (known: {known})")
        if self.audience is not None and audiences.get(self.audience) != self.entity:
            of_entity = sorted(name for name, e in audiences.items() if e == self.entity)
            raise InvalidExport(
                "audience",
                f"no audience {self.audience!r} of entity {self.entity!r} "
                f"(the rule file has: {of_entity})",
            )
        if self.destination == "file" and not FILE_NAME.match(self.target):
            raise InvalidExport(
                "file",
                f"{self.target!r}: a file name in the export directory (letters, digits, "
                "'_', '.', '-'; no path)",
            )
        if self.destination == "topic" and not TOPIC_NAME.match(self.target):
            raise InvalidExport("topic", f"{self.target!r} is not a Kafka topic name")
        if not 0 < self.rate_per_s < float("inf"):
            raise InvalidExport("rate", "profiles per second: a positive number")
        if not 1 <= self.batch <= MAX_BATCH:
            raise InvalidExport("batchSize", f"between 1 and {MAX_BATCH}")
        return self

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> ExportSpec:
        data = orjson.loads(raw)
        return cls(
            entity=data["entity"],
            audience=data["audience"],
            destination=data["destination"],
            target=data["target"],
            rate_per_s=float(data["rate_per_s"]),
            batch=int(data["batch"]),
        )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far a job got, saved after each round: a runner that takes the job over
    starts from here."""

    #: SCAN's cursor for the next round ("0" before the first and after the last)
    cursor: str = "0"
    rounds: int = 0
    #: views the SCAN found (all of them, for an audience export)
    scanned: int = 0
    exported: int = 0
    #: bytes of the file written (what a resumed run truncates the file to)
    file_bytes: int = 0
    #: seconds spent running, over every run (for the rate)
    running_s: float = 0.0
    #: the audience's size when the job started (an estimate of its total)
    expected: int | None = None
    #: the job's file was made by it (a file that exists when a job starts that has
    #: not made one is someone else's, never cut or appended to)
    opened: bool = False
    #: the spread layout's buckets, which its cursor walks (`traitflow.spread_scan`);
    #: 0 on the tag layout, whose cursor is SCAN's
    buckets: int = 0

    @property
    def scan_done(self) -> bool:
        return self.rounds > 0 and self.cursor == "0"

    def after_round(
        self, cursor: str, scanned: int, exported: int, written: int, seconds: float
    ) -> Checkpoint:
        return replace(
            self,
            cursor=cursor,
            rounds=self.rounds + 1,
            scanned=self.scanned + scanned,
            exported=self.exported + exported,
            file_bytes=self.file_bytes + written,
            running_s=self.running_s + seconds,
        )

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | None) -> Checkpoint:
        if not raw:
            return cls()
        data = orjson.loads(raw)
        return cls(**{name: data[name] for name in data if name in cls.__dataclass_fields__})


def scan_fraction(cursor: str) -> float:
    """The share of Redis's key table a SCAN has visited when it returns `cursor`.

    SCAN walks the table's buckets in reverse-binary order (the cursor is incremented
    from its high bit down), so reversing the cursor's bits gives how many buckets were
    visited; over 64 bits it is already that count scaled to the table's size, whatever
    the size. Keys spread evenly over buckets, so it is the share of keys visited too."""
    value = int(cursor)
    return int(f"{value:064b}"[::-1], 2) / 2**64


@dataclass(frozen=True, slots=True)
class Progress:
    exported: int
    scanned: int
    #: 0..1: how much of the keyspace the SCAN has visited (1 once it has ended)
    fraction: float
    #: profiles the export will hold at the end, estimated (exact once done)
    estimated_total: int | None
    #: profiles exported per second of running
    rate_per_s: float
    eta_s: float | None


def progress(checkpoint: Checkpoint) -> Progress:
    """What a status answer and the CLI's progress line say of a checkpoint."""
    done = checkpoint.scan_done
    fraction = (
        1.0
        if done
        else 0.0
        if not checkpoint.rounds
        else walked(checkpoint.cursor, checkpoint.buckets, checkpoint.rounds)
        if checkpoint.buckets
        else scan_fraction(checkpoint.cursor)
    )
    exported = checkpoint.exported
    total: int | None
    if done:
        total = exported
    elif checkpoint.expected is not None:
        total = max(checkpoint.expected, exported)
    elif fraction > 0:
        total = round(exported / fraction)
    else:
        total = None
    seconds = checkpoint.running_s
    rate = exported / seconds if seconds > 0 else 0.0
    eta = None
    if done:
        eta = 0.0
    elif fraction > 0 and seconds > 0:
        eta = seconds * (1 - fraction) / fraction
    return Progress(exported, checkpoint.scanned, fraction, total, rate, eta)


@dataclass(slots=True)
class Job:
    id: str
    spec: ExportSpec
    status: str
    created_ms: int
    updated_ms: int
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    finished_ms: int | None = None
    #: why it failed (or was refused a resume)
    error: str | None = None
    #: how many times a runner took it (more than one: it was resumed)
    runs: int = 0


def cancellable(status: str) -> bool:
    return status in RUNNABLE


def claimable(status: str, *, resume_failed: bool = False) -> bool:
    """Whether a runner may take a job in `status`: NEW or PROCESSING (its runner died),
    and FAILED only when resumed on purpose (`traitflow export resume`)."""
    return status in RUNNABLE or (resume_failed and status == FAILED)


def described(job: Job) -> dict[str, Any]:
    """A job as the API and `traitflow export status --json` show it: Adobe's export
    job (`id`, `jobType`, `status`, `destination`, `filter`, `metrics.totalTime`,
    `creationTime`, `updateTime`, `errors`) and traitflow's `progress`."""
    spec = job.spec
    now = progress(job.checkpoint)
    answer: dict[str, Any] = {
        "id": job.id,
        "jobType": "BATCH",
        "status": job.status,
        "entity": spec.entity,
        "filter": (
            {"segments": [{"segmentId": spec.audience, "segmentNs": "ups"}]}
            if spec.audience
            else {}
        ),
        "destination": {spec.destination: spec.target},
        "rate": spec.rate_per_s,
        "batchSize": spec.batch,
        "progress": {
            "exported": now.exported,
            "scanned": now.scanned,
            "fraction": round(now.fraction, 4),
            "estimatedTotal": now.estimated_total,
            "ratePerSecond": round(now.rate_per_s, 1),
            "etaSeconds": None if now.eta_s is None else round(now.eta_s, 1),
        },
        "runs": job.runs,
        "creationTime": job.created_ms,
        "updateTime": job.updated_ms,
        "metrics": {
            "totalTime": {
                "startTimeInMs": job.created_ms,
                "endTimeInMs": job.finished_ms,
                "totalTimeInMs": (
                    None if job.finished_ms is None else job.finished_ms - job.created_ms
                ),
            }
        },
    }
    if job.error:
        answer["errors"] = [{"message": job.error}]
    return answer


def progress_line(job: Job) -> str:
    """One line for a terminal: `12,345 / ~40,000 profiles (31%) 2,410/s ETA 11s`."""
    now = progress(job.checkpoint)
    total = "?" if now.estimated_total is None else f"~{now.estimated_total:,}"
    if job.checkpoint.scan_done:
        total = f"{now.exported:,}"
    eta = "" if now.eta_s is None else f" ETA {now.eta_s:.0f}s"
    return (
        f"{job.id} {job.status}: {now.exported:,} / {total} profiles "
        f"({now.fraction:.0%} scanned) {now.rate_per_s:,.0f}/s{eta}"
    )


def profile_id(key: bytes, view_prefix: bytes) -> bytes:
    """The profile id of a view key (`tf:v:user:u-1` -> `u-1`)."""
    return key[len(view_prefix) :]


def is_member(view: bytes, audience: str) -> bool:
    """Whether the view says its profile is in `audience` (`_audiences`)."""
    if f'"{audience}":true'.encode() not in view:  # views are compact JSON: no spaces
        return False
    decoded = orjson.loads(view)
    member = decoded.get("_audiences", {}).get(audience) if isinstance(decoded, dict) else None
    return member is True


def one_line(view: bytes) -> bytes:
    """A view as one NDJSON line (with its newline): views are stored compact, so as
    they are; one that held a line break would be re-encoded."""
    if b"\n" in view or b"\r" in view:
        view = orjson.dumps(orjson.loads(view))
    return view + b"\n"


def seen_digest(pid: bytes) -> bytes:
    """What a run remembers of an exported profile, so that a key SCAN returns twice is
    written once: 16 bytes whatever the id's length."""
    return hashlib.blake2b(pid, digest_size=16).digest()


def ids_of_lines(lines: Iterable[bytes]) -> Iterable[bytes]:
    """The profile id of each complete NDJSON line (`id` of the view): how a resumed
    file export learns what it wrote before."""
    for line in lines:
        if line.strip():
            yield str(orjson.loads(line)["id"]).encode()


class Pacer:
    """Keeps a run at `rate_per_s` views read: after a round, how long to wait before
    the next one. The pace is kept over the whole run (a slow round is not made up
    beyond one round's worth)."""

    def __init__(self, rate_per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.clock = clock
        self.started = clock()
        self.read = 0

    def wait_after(self, read: int) -> float:
        self.read += read
        due = self.started + self.read / self.rate_per_s
        now = self.clock()
        if now - due > read / self.rate_per_s:  # behind by more than a round: no bursts
            self.started, self.read = now, 0
            return 0.0
        return max(0.0, due - now)
