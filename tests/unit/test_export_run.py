"""An export run (`traitflow.export_run.run_job`) against an in-memory stand-in for
Redis that answers the commands and scripts of `traitflow.export_store` as Redis
would: the SCAN pages are given, so that a key returned twice, a view deleted after
the SCAN saw it, a run that dies between rounds, a cancel and a lost lease are each
met on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from prometheus_client import CollectorRegistry

from traitflow import export_store
from traitflow.config import Settings
from traitflow.export_jobs import ExportRefused, ExportSpec
from traitflow.export_run import ExportMetrics, run_job
from traitflow.export_store import ExportJobs
from traitflow.key_layout import KeyLayout
from traitflow.resp import RespClient, Script

KEYS = KeyLayout("tf")


class FakeRedis:
    """The commands export jobs send, over dicts; SCAN answers the `pages` given
    (cursor -> (next cursor, keys))."""

    def __init__(self, pages: dict[str, tuple[str, list[bytes]]]) -> None:
        self.pages = pages
        self.strings: dict[str, bytes] = {}
        self.hashes: dict[str, dict[str, bytes]] = {}
        self.sets: dict[str, set[str]] = {}
        self.zsets: dict[str, dict[str, float]] = {}
        self.scans: list[str] = []

    async def call(self, *args: Any) -> Any:
        name, rest = args[0], [a.decode() if isinstance(a, bytes) else a for a in args[1:]]
        if name == "HSET":
            fields = self.hashes.setdefault(rest[0], {})
            for i in range(1, len(args) - 1, 2):
                value = args[i + 2]
                fields[rest[i]] = value if isinstance(value, bytes) else str(value).encode()
            return 1
        if name == "HGETALL":
            return [x for k, v in self.hashes.get(rest[0], {}).items() for x in (k.encode(), v)]
        if name == "HGET":
            return self.hashes.get(rest[0], {}).get(rest[1])
        if name == "SADD":
            self.sets.setdefault(rest[0], set()).update(rest[1:])
            return 1
        if name == "SMEMBERS":
            return [m.encode() for m in self.sets.get(rest[0], set())]
        if name == "ZADD":
            self.zsets.setdefault(rest[0], {})[rest[2]] = float(rest[1])
            return 1
        if name == "ZREVRANGE":
            ranked = sorted(self.zsets.get(rest[0], {}).items(), key=lambda kv: -kv[1])
            return [m.encode() for m, _ in ranked][: int(rest[2]) + 1]
        if name == "ZSCORE":
            return self.zsets.get(rest[0], {}).get(rest[1])
        if name == "ZCOUNT":
            return 0
        if name == "EXISTS":
            return int(rest[0] in self.strings)
        if name == "SCAN":
            self.scans.append(rest[0])
            return self.pages[rest[0]][0].encode(), self.pages[rest[0]][1]
        if name == "MGET":
            return [self.strings.get(key) for key in rest]
        raise AssertionError(f"unexpected command {name}")

    async def eval(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        text = [a if isinstance(a, str) else str(a) for a in args]
        if script is export_store._CLAIM:
            job, lease, runnable = keys
            status = self.hashes.get(job, {}).get("status")
            if status is None:
                return b"missing"
            if status not in (b"NEW", b"PROCESSING") and not (
                text[3] == "1" and status == b"FAILED"
            ):
                return status
            if lease in self.strings:
                return b"held"
            self.strings[lease] = text[0].encode()
            fields = self.hashes[job]
            fields["status"] = b"PROCESSING"
            fields.pop("error", None)
            fields["runs"] = str(int(fields.get("runs", b"0")) + 1).encode()
            self.sets.setdefault(runnable, set()).add(text[4])
            return b"ok"
        if script is export_store._SAVE:
            job, lease, runnable = keys
            if self.strings.get(lease) != text[0].encode():
                return b"lost"
            if self.hashes[job]["status"] == b"CANCELLED":
                del self.strings[lease]
                return b"cancelled"
            self.hashes[job]["checkpoint"] = cast(bytes, args[2])
            if text[4]:
                self.hashes[job]["status"] = text[4].encode()
                if text[5]:
                    self.hashes[job]["error"] = text[5].encode()
                self.sets[runnable].discard(text[6])
                del self.strings[lease]
            return b"ok"
        if script is export_store._CANCEL:
            self.hashes[keys[0]]["status"] = b"CANCELLED"
            return b"ok"
        if script is export_store._RELEASE:
            return 0
        raise AssertionError("unexpected script")


def view(pid: str, member: bool = True) -> bytes:
    return orjson.dumps({"id": pid, "_audiences": {"vip": member}})


def key(pid: str) -> bytes:
    return KEYS.view("user", pid).encode()


def fake_with(pages: dict[str, tuple[str, list[bytes]]], views: dict[str, bytes]) -> FakeRedis:
    fake = FakeRedis(pages)
    for pid, value in views.items():
        fake.strings[KEYS.view("user", pid)] = value
    return fake


#: u-2 comes back in the second page (Redis resized its table during the SCAN)
PAGES = {
    "0": ("4", [key("u-1"), key("u-2")]),
    "4": ("2", [key("u-2"), key("u-3"), key("gone")]),
    "2": ("0", [key("u-4")]),
}
VIEWS = {"u-1": view("u-1"), "u-2": view("u-2", False), "u-3": view("u-3"), "u-4": view("u-4")}


def settings_in(tmp_path: Path) -> Settings:
    return Settings(export_dir=tmp_path, export_lease_s=5.0)


def spec(audience: str | None = None) -> ExportSpec:
    return ExportSpec("user", audience, "file", "out.ndjson", 1e6, 2)  # a round a page


def run(fake: FakeRedis, settings: Settings, job_id: str, **options: Any) -> Any:
    return asyncio.run(run_job(cast(RespClient, fake), settings, job_id, **options))


def create(fake: FakeRedis, job_spec: ExportSpec) -> str:
    return asyncio.run(ExportJobs(cast(RespClient, fake), "tf").create(job_spec)).id


def ids_in(path: Path) -> list[str]:
    return [orjson.loads(line)["id"] for line in path.read_bytes().splitlines()]


def test_a_key_scanned_twice_is_exported_once_and_a_deleted_one_not_at_all(
    tmp_path: Path,
) -> None:
    fake = fake_with(PAGES, VIEWS)
    job_id = create(fake, spec())
    registry = CollectorRegistry()
    metrics = ExportMetrics(registry)
    job = run(fake, settings_in(tmp_path), job_id, metrics=metrics)
    assert job.status == "SUCCEEDED"
    assert ids_in(tmp_path / "out.ndjson") == ["u-1", "u-2", "u-3", "u-4"]
    assert (job.checkpoint.scanned, job.checkpoint.exported) == (6, 4)
    assert job.checkpoint.file_bytes == (tmp_path / "out.ndjson").stat().st_size
    exported = registry.get_sample_value("traitflow_export_profiles_total", {"destination": "file"})
    assert exported == 4
    assert registry.get_sample_value("traitflow_export_jobs_total", {"outcome": "succeeded"}) == 1
    assert fake.sets[KEYS.export_runnable()] == set()  # ended: no runner takes it again


def test_an_audience_export_writes_its_members_only(tmp_path: Path) -> None:
    fake = fake_with(PAGES, VIEWS)
    job = run(fake, settings_in(tmp_path), create(fake, spec("vip")))
    assert job.status == "SUCCEEDED"
    assert ids_in(tmp_path / "out.ndjson") == ["u-1", "u-3", "u-4"]


class Died(BaseException):
    """The process running the export stopped between two rounds (no exception a run
    would handle: nothing of it runs any more)."""


def test_a_run_that_dies_is_taken_over_from_its_checkpoint(tmp_path: Path) -> None:
    fake = fake_with(PAGES, VIEWS)
    job_id = create(fake, spec())

    def die(job: Any) -> None:
        raise Died

    with pytest.raises(Died):
        run(fake, settings_in(tmp_path), job_id, on_round=die)
    assert fake.hashes[KEYS.export_job(job_id)]["status"] == b"PROCESSING"
    with pytest.raises(ExportRefused, match="another runner holds it"):
        run(fake, settings_in(tmp_path), job_id)
    del fake.strings[KEYS.export_lease(job_id)]  # its lease ran out
    fake.scans.clear()
    job = run(fake, settings_in(tmp_path), job_id)
    assert fake.scans == ["4", "2"]  # on from the saved cursor, not from the start
    assert job.status == "SUCCEEDED"
    assert job.runs == 2
    assert ids_in(tmp_path / "out.ndjson") == ["u-1", "u-2", "u-3", "u-4"]
    assert job.checkpoint.exported == 4


def test_a_cancel_stops_the_run_after_its_round(tmp_path: Path) -> None:
    fake = fake_with(PAGES, VIEWS)
    job_id = create(fake, spec())
    jobs = ExportJobs(cast(RespClient, fake), "tf")
    job = run(
        fake, settings_in(tmp_path), job_id, on_round=lambda _: asyncio.ensure_future(
            jobs.cancel(job_id)
        )
    )  # fmt: skip
    assert job.status == "CANCELLED"
    assert KEYS.export_lease(job_id) not in fake.strings
    assert len(fake.scans) < len(PAGES)


def test_a_run_that_lost_its_lease_stops_without_saving(tmp_path: Path) -> None:
    fake = fake_with(PAGES, VIEWS)
    job_id = create(fake, spec())

    def overtaken(job: Any) -> None:  # paused past its lease; another runner took it
        fake.strings[KEYS.export_lease(job_id)] = b"another runner"

    job = run(fake, settings_in(tmp_path), job_id, on_round=overtaken)
    assert job.status == "PROCESSING"
    assert orjson.loads(fake.hashes[KEYS.export_job(job_id)]["checkpoint"])["rounds"] == 1


def test_a_destination_that_refuses_fails_the_job_and_a_resume_goes_on(tmp_path: Path) -> None:
    fake = fake_with(PAGES, VIEWS)
    job_id = create(fake, spec())
    (tmp_path / "out.ndjson").write_bytes(b"not ours\n")
    job = run(fake, settings_in(tmp_path), job_id)
    assert job.status == "FAILED"
    assert "FileExistsError" in (job.error or "")
    with pytest.raises(ExportRefused, match="it is FAILED"):
        run(fake, settings_in(tmp_path), job_id)
    (tmp_path / "out.ndjson").unlink()  # what the operator fixes
    job = run(fake, settings_in(tmp_path), job_id, resume_failed=True)
    assert job.status == "SUCCEEDED"
    assert job.error is None
    assert ids_in(tmp_path / "out.ndjson") == ["u-1", "u-2", "u-3", "u-4"]


def test_a_finished_or_unknown_job_is_not_run(tmp_path: Path) -> None:
    fake = fake_with(PAGES, VIEWS)
    job_id = create(fake, spec())
    run(fake, settings_in(tmp_path), job_id)
    with pytest.raises(ExportRefused, match="it is SUCCEEDED"):
        run(fake, settings_in(tmp_path), job_id, resume_failed=True)
    with pytest.raises(ExportRefused, match="no such job"):
        run(fake, settings_in(tmp_path), "0123456789ab")


def test_a_view_that_cannot_be_read_fails_the_job_instead_of_stopping_its_runner(
    tmp_path: Path,
) -> None:
    fake = fake_with(PAGES, VIEWS | {"u-3": b'{"id":"u-3","_audiences":{"vip":true'})
    job = run(fake, settings_in(tmp_path), create(fake, spec("vip")))
    assert job.status == "FAILED"
    assert "JSONDecodeError" in (job.error or "")
    assert fake.sets[KEYS.export_runnable()] == set()  # not taken again and again
