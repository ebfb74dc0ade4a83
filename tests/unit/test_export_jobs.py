"""Export jobs without Redis (`traitflow.export_jobs`, `traitflow.export_run.FileSink`):
what a job may ask for, how its status moves, how far a SCAN got, the progress and
pace figures, the NDJSON lines, and the resume of a file export (cut back to the last
checkpoint, each profile once)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from traitflow.export_jobs import (
    CANCELLED,
    FAILED,
    NEW,
    PROCESSING,
    SUCCEEDED,
    Checkpoint,
    ExportSpec,
    InvalidExport,
    Job,
    Pacer,
    cancellable,
    claimable,
    described,
    ids_of_lines,
    is_member,
    one_line,
    profile_id,
    progress,
    progress_line,
    scan_fraction,
    seen_digest,
)
from traitflow.export_run import DestinationChanged, FileSink

SPEC = ExportSpec("user", None, "file", "all.ndjson", 1000.0, 100)
AUDIENCES = {"vip": "user", "big_accounts": "account"}


def invalid_field(spec: ExportSpec) -> str:
    with pytest.raises(InvalidExport) as caught:
        spec.check(["user", "account"], AUDIENCES)
    return caught.value.field


def test_a_valid_spec_is_itself_and_survives_encoding() -> None:
    spec = ExportSpec("user", "vip", "topic", "vip-export", 250.0, 50)
    assert spec.check(["user", "account"], AUDIENCES) is spec
    assert ExportSpec.decode(spec.encode()) == spec


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"entity": "household"}, "entity"),
        ({"audience": "nope"}, "audience"),
        ({"audience": "big_accounts"}, "audience"),  # an audience of another entity
        ({"target": "../etc/passwd"}, "file"),
        ({"target": "out/all.ndjson"}, "file"),
        ({"target": ".hidden"}, "file"),
        ({"destination": "topic", "target": "a topic"}, "topic"),
        ({"destination": "topic", "target": ".."}, "topic"),
        ({"rate_per_s": 0.0}, "rate"),
        ({"rate_per_s": float("inf")}, "rate"),
        ({"batch": 0}, "batchSize"),
        ({"batch": 10_001}, "batchSize"),
    ],
)
def test_what_cannot_be_exported_is_refused_naming_the_field(
    changes: dict[str, object], field: str
) -> None:
    values = {
        "entity": SPEC.entity,
        "audience": SPEC.audience,
        "destination": SPEC.destination,
        "target": SPEC.target,
        "rate_per_s": SPEC.rate_per_s,
        "batch": SPEC.batch,
    }
    assert invalid_field(ExportSpec(**(values | changes))) == field  # type: ignore[arg-type]


def test_status_transitions() -> None:
    assert [s for s in (NEW, PROCESSING, SUCCEEDED, FAILED, CANCELLED) if cancellable(s)] == [
        NEW,
        PROCESSING,
    ]
    assert claimable(NEW)
    assert claimable(PROCESSING)  # its runner died: taken over
    assert not claimable(FAILED)
    assert claimable(FAILED, resume_failed=True)  # resumed on purpose, once fixed
    for final in (SUCCEEDED, CANCELLED):
        assert not claimable(final, resume_failed=True)


def redis_next_cursor(cursor: int, mask: int) -> int:
    """Redis's dictScan cursor step: increment the reversed cursor (dict.c)."""

    def rev(value: int) -> int:
        return int(f"{value & (2**64 - 1):064b}"[::-1], 2)

    cursor |= ~mask
    return rev(rev(cursor) + 1) & (2**64 - 1)


@given(st.integers(min_value=0, max_value=10))
def test_the_scan_fraction_is_the_share_of_buckets_visited(bits: int) -> None:
    size = 2**bits
    cursor, visited = 0, 0
    while True:
        cursor = redis_next_cursor(cursor, size - 1)
        visited += 1
        if cursor == 0:
            break
        assert scan_fraction(str(cursor)) == pytest.approx(visited / size)
    assert visited == size


def test_a_checkpoint_adds_up_rounds_and_survives_encoding() -> None:
    start = Checkpoint(expected=40)
    assert not start.scan_done
    after = start.after_round("1234", 10, 4, 400, 0.5).after_round("0", 6, 2, 200, 0.25)
    assert after.scan_done
    assert (after.scanned, after.exported, after.file_bytes, after.rounds) == (16, 6, 600, 2)
    assert after.running_s == pytest.approx(0.75)
    assert Checkpoint.decode(after.encode()) == after
    assert Checkpoint.decode(None) == Checkpoint()
    # a checkpoint saved by a version with fields this one lacks still reads
    assert Checkpoint.decode(orjson.dumps({"cursor": "7", "future": 1})).cursor == "7"


def test_progress_estimates_the_total_and_is_exact_at_the_end() -> None:
    assert progress(Checkpoint()).estimated_total is None
    half = Checkpoint(cursor="1", rounds=3, exported=500, running_s=2.0)
    now = progress(half)
    assert now.fraction == pytest.approx(0.5)
    assert now.estimated_total == 1000  # all profiles: what was found over how far
    assert now.rate_per_s == pytest.approx(250.0)
    assert now.eta_s == pytest.approx(2.0)
    # an audience: its size when the job started, unless more were found already
    assert progress(replace(half, expected=700)).estimated_total == 700
    assert progress(replace(half, expected=300)).estimated_total == 500
    done = Checkpoint(cursor="0", rounds=9, exported=990, running_s=4.0)
    assert progress(done).estimated_total == 990
    assert progress(done).fraction == 1.0
    assert progress(done).eta_s == 0.0


def test_a_job_is_described_in_adobe_s_shape_with_progress() -> None:
    spec = ExportSpec("user", "vip", "topic", "vip-export", 100.0, 10)
    job = Job("0123456789ab", spec, FAILED, 1000, 4000, Checkpoint(), 4000, "KafkaError: x", 2)
    shown = described(job)
    assert shown["status"] == FAILED
    assert shown["jobType"] == "BATCH"
    assert shown["filter"] == {"segments": [{"segmentId": "vip", "segmentNs": "ups"}]}
    assert shown["destination"] == {"topic": "vip-export"}
    assert shown["metrics"]["totalTime"]["totalTimeInMs"] == 3000
    assert shown["errors"] == [{"message": "KafkaError: x"}]
    assert shown["runs"] == 2
    assert set(shown["progress"]) == {
        "exported",
        "scanned",
        "fraction",
        "estimatedTotal",
        "ratePerSecond",
        "etaSeconds",
    }
    assert "0123456789ab FAILED: 0 / ? profiles" in progress_line(job)


def test_membership_is_read_from_the_view() -> None:
    assert is_member(b'{"id":"u","_audiences":{"vip":true,"big":false}}', "vip")
    assert not is_member(b'{"id":"u","_audiences":{"vip":true,"big":false}}', "big")
    assert not is_member(b'{"id":"u","_audiences":{"vip":1}}', "vip")  # true only
    assert not is_member(b'{"id":"u"}', "vip")


def test_a_view_is_one_line_as_stored() -> None:
    view = b'{"id":"u-1","traits":{"note":"a\\nb"}}'
    assert one_line(view) == view + b"\n"  # an escaped newline is inside a string
    assert one_line(b'{"id":\n"u-2"}') == b'{"id":"u-2"}\n'
    assert profile_id(b"tf:v:user:u:1", b"tf:v:user:") == b"u:1"
    assert list(ids_of_lines([b'{"id":"u-1"}\n', b"\n", b'{"id":7}\n'])) == [b"u-1", b"7"]
    assert seen_digest(b"u-1") != seen_digest(b"u-2")
    assert len(seen_digest(b"x" * 1000)) == 16


def test_the_pacer_keeps_the_rate_without_bursts() -> None:
    now = [0.0]
    pacer = Pacer(100.0, clock=lambda: now[0])
    assert pacer.wait_after(50) == pytest.approx(0.5)
    now[0] = 0.5
    assert pacer.wait_after(50) == pytest.approx(0.5)
    now[0] = 1.2  # a slow round: the next wait is shorter
    assert pacer.wait_after(10) == 0.0
    now[0] = 10.0  # far behind: no burst to catch up, the pace starts again
    assert pacer.wait_after(10) == 0.0
    assert pacer.wait_after(10) == pytest.approx(0.1)


def job_at(checkpoint: Checkpoint, runs: int = 1) -> Job:
    return Job("0123456789ab", SPEC, PROCESSING, 0, 0, checkpoint, runs=runs)


def rows(*ids: str) -> list[tuple[bytes, bytes]]:
    return [(pid.encode(), orjson.dumps({"id": pid})) for pid in ids]


def test_a_resumed_file_export_is_cut_to_its_checkpoint_and_knows_what_it_wrote(
    tmp_path: Path,
) -> None:
    path = tmp_path / "exports" / "all.ndjson"

    async def run() -> None:
        first = FileSink(path)
        assert await first.start(job_at(Checkpoint())) == set()
        written = await first.write(rows("u-1", "u-2"))
        saved = Checkpoint(cursor="96", rounds=1, exported=2, file_bytes=written, opened=True)
        await first.write(rows("u-3"))  # a round written, then the process died
        await first.close()
        with path.open("ab") as torn:
            torn.write(b'{"id":"u-')  # and a line cut short
        second = FileSink(path)
        seen = await second.start(job_at(saved, runs=2))
        assert seen == {seen_digest(b"u-1"), seen_digest(b"u-2")}
        assert path.read_bytes() == b'{"id":"u-1"}\n{"id":"u-2"}\n'
        await second.write(rows("u-3"))
        await second.close()

    asyncio.run(run())
    assert [orjson.loads(line)["id"] for line in path.read_bytes().splitlines()] == [
        "u-1",
        "u-2",
        "u-3",
    ]


def test_a_file_export_never_writes_into_a_file_it_did_not_make(tmp_path: Path) -> None:
    path = tmp_path / "theirs.ndjson"
    path.write_bytes(b"someone else's\n")
    with pytest.raises(FileExistsError):
        asyncio.run(FileSink(path).start(job_at(Checkpoint())))
    # nor when resumed after failing on it
    with pytest.raises(FileExistsError):
        asyncio.run(FileSink(path).start(job_at(Checkpoint(), runs=2)))
    assert path.read_bytes() == b"someone else's\n"


def test_a_file_shorter_than_its_checkpoint_fails_the_job(tmp_path: Path) -> None:
    path = tmp_path / "all.ndjson"
    path.write_bytes(b'{"id":"u-1"}\n')
    saved = Checkpoint(cursor="5", rounds=2, exported=2, file_bytes=26, opened=True)
    with pytest.raises(DestinationChanged, match="fewer than the 26"):
        asyncio.run(FileSink(path).start(job_at(saved, runs=2)))
    path.unlink()  # deleted
    with pytest.raises(DestinationChanged):
        asyncio.run(FileSink(path).start(job_at(saved, runs=2)))
