"""Export jobs kept in Redis, so that any process can report on, cancel or take over a
job (`traitflow.export_jobs` says what a job is).

A job is a hash (`KeyLayout.export_job`: its spec, status, checkpoint, times, error,
runs), listed in a sorted set by creation time; the jobs a runner may take (NEW, or
PROCESSING) are also in a set, so that finding one costs no walk over old jobs. A
runner holds a job by a lease (a key with its token that expires), renewed by every
checkpoint it saves: a runner that dies stops renewing it, and once it has expired
another runner takes the job over from the last checkpoint. Every change is one Lua
script, so that a cancel and a runner's save cannot overwrite each other, and a runner
that lost its lease (paused past it while another took over) cannot save over the new
runner's progress.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from traitflow.export_jobs import NEW, Checkpoint, ExportSpec, Job
from traitflow.key_layout import KeyLayout
from traitflow.resp import RespClient, Script
from traitflow.store import now_ms

#: KEYS job, lease, active; ARGV token, lease ms, now, resume a FAILED one ("1")
_CLAIM = Script.of(
    """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
local runnable = status == 'NEW' or status == 'PROCESSING'
if not runnable and not (ARGV[4] == '1' and status == 'FAILED') then return status end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'held' end
redis.call('HSET', KEYS[1], 'status', 'PROCESSING', 'updated', ARGV[3])
redis.call('HDEL', KEYS[1], 'error', 'finished')
redis.call('HINCRBY', KEYS[1], 'runs', 1)
redis.call('SADD', KEYS[3], ARGV[5])
return 'ok'
"""
)

#: KEYS job, lease, active; ARGV token, lease ms, checkpoint, now, final status or '',
#: error, job id
_SAVE = Script.of(
    """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 'lost' end
if redis.call('HGET', KEYS[1], 'status') == 'CANCELLED' then
  redis.call('DEL', KEYS[2])
  return 'cancelled'
end
redis.call('HSET', KEYS[1], 'checkpoint', ARGV[3], 'updated', ARGV[4])
if ARGV[5] == '' then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 'ok'
end
redis.call('HSET', KEYS[1], 'status', ARGV[5], 'finished', ARGV[4])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[6]) end
redis.call('SREM', KEYS[3], ARGV[7])
redis.call('DEL', KEYS[2])
return 'ok'
"""
)

#: KEYS job, active; ARGV now, job id
_CANCEL = Script.of(
    """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'NEW' and status ~= 'PROCESSING' then return status end
redis.call('HSET', KEYS[1], 'status', 'CANCELLED', 'updated', ARGV[1], 'finished', ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 'ok'
"""
)

#: KEYS lease; ARGV token: a runner that stops (its process shuts down) lets go at once
_RELEASE = Script.of(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ExportJobs:
    """The export jobs under one key prefix, over a Redis connection."""

    def __init__(self, client: RespClient, prefix: str, clock: Callable[[], int] = now_ms) -> None:
        self.client = client
        self.keys = KeyLayout(prefix)
        self.clock = clock

    async def create(self, spec: ExportSpec, expected: int | None = None) -> Job:
        """A NEW job for `spec` (checked by the caller); `expected`: the audience's size."""
        job_id = uuid.uuid4().hex[:12]
        now = self.clock()
        checkpoint = Checkpoint(expected=expected)
        await self.client.call(
            "HSET",
            self.keys.export_job(job_id),
            "spec",
            spec.encode(),
            "status",
            NEW,
            "created",
            now,
            "updated",
            now,
            "checkpoint",
            checkpoint.encode(),
            "runs",
            0,
        )
        await self.client.call("SADD", self.keys.export_runnable(), job_id)
        await self.client.call("ZADD", self.keys.export_jobs(), now, job_id)
        return Job(job_id, spec, NEW, now, now, checkpoint)

    async def get(self, job_id: str) -> Job | None:
        raw = await self.client.call("HGETALL", self.keys.export_job(job_id))
        if not raw:
            return None
        fields = {_text(raw[i]): raw[i + 1] for i in range(0, len(raw), 2)}
        finished = fields.get("finished")
        error = fields.get("error")
        return Job(
            id=job_id,
            spec=ExportSpec.decode(fields["spec"]),
            status=_text(fields["status"]),
            created_ms=int(fields["created"]),
            updated_ms=int(fields["updated"]),
            checkpoint=Checkpoint.decode(fields.get("checkpoint")),
            finished_ms=None if finished is None else int(finished),
            error=None if error is None else _text(error),
            runs=int(fields.get("runs", 0)),
        )

    async def recent(self, limit: int = 100, status: str | None = None) -> list[Job]:
        """The newest jobs first (at most `limit` of those read), of `status` if given."""
        ids = await self.client.call("ZREVRANGE", self.keys.export_jobs(), 0, limit - 1)
        jobs = [await self.get(_text(job_id)) for job_id in ids]
        return [job for job in jobs if job is not None and status in (None, job.status)]

    async def runnable(self) -> list[str]:
        """Jobs a runner may take now: NEW or PROCESSING, with no runner holding them
        (never taken, or their runner died and its lease expired); oldest first."""
        ids = sorted(
            _text(job_id)
            for job_id in await self.client.call("SMEMBERS", self.keys.export_runnable())
        )
        free = []
        for job_id in ids:
            if not await self.client.call("EXISTS", self.keys.export_lease(job_id)):
                score = await self.client.call("ZSCORE", self.keys.export_jobs(), job_id)
                free.append((float(score or 0), job_id))
        return [job_id for _, job_id in sorted(free)]

    async def claim(
        self, job_id: str, token: str, lease_ms: int, *, resume_failed: bool = False
    ) -> str:
        """'ok' when the job is now this runner's; else why not: 'missing', 'held' (by
        another runner) or the status that does not let it run."""
        keys = self._keys(job_id)
        args = (token, lease_ms, self.clock(), "1" if resume_failed else "0", job_id)
        return _text(await self.client.eval(_CLAIM, keys, args))

    async def save(
        self,
        job_id: str,
        token: str,
        lease_ms: int,
        checkpoint: Checkpoint,
        *,
        final: str = "",
        error: str = "",
    ) -> str:
        """Save a checkpoint (and a final status) if this runner still holds the job:
        'ok', 'cancelled' (someone cancelled it: stop) or 'lost' (another runner has it)."""
        args = (token, lease_ms, checkpoint.encode(), self.clock(), final, error, job_id)
        return _text(await self.client.eval(_SAVE, self._keys(job_id), args))

    async def cancel(self, job_id: str) -> str:
        """'ok', 'missing', or the final status the job already has."""
        keys = (self.keys.export_job(job_id), self.keys.export_runnable())
        return _text(await self.client.eval(_CANCEL, keys, (self.clock(), job_id)))

    async def release(self, job_id: str, token: str) -> None:
        await self.client.eval(_RELEASE, (self.keys.export_lease(job_id),), (token,))

    async def targets_in_use(self, destination: str) -> set[str]:
        """Files (or topics) that NEW or PROCESSING jobs write: two jobs writing one file
        would interleave their lines."""
        ids = await self.client.call("SMEMBERS", self.keys.export_runnable())
        jobs = [await self.get(_text(job_id)) for job_id in ids]
        return {
            job.spec.target
            for job in jobs
            if job is not None and job.spec.destination == destination
        }

    async def audience_size(self, entity: str, audience: str) -> int:
        """Members the commits counted: kept ones, and expiring ones not yet due
        (`traitflow.audience_counts`)."""
        kept = await self.client.call("HGET", self.keys.audience_sizes(entity), audience)
        due = await self.client.call(
            "ZCOUNT", self.keys.expiring_members(entity, audience), self.clock(), "+inf"
        )
        return int(kept or 0) + int(due or 0)

    def _keys(self, job_id: str) -> Sequence[str]:
        return (
            self.keys.export_job(job_id),
            self.keys.export_lease(job_id),
            self.keys.export_runnable(),
        )
