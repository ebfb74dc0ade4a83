"""Settings of the API process: where it listens, what a key may do, how refusals cost
Redis nothing, HTTP ingest, and the background jobs an API process runs (exports,
source delete jobs) (`Settings` is made of this and the other groups:
`traitflow.config`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class ApiSettings(BaseModel):
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    #: per-key request rate (token bucket refill, requests/s) and burst, for keys
    #: created without their own `--rate` / `--burst`
    api_rate_per_s: float = Field(default=100.0, gt=0)
    api_burst: int = Field(default=200, ge=1)
    #: how long an API process trusts an API key record it read: a revoke takes effect
    #: within this many seconds (0 = read the record on every request)
    api_key_cache_s: float = Field(default=2.0, ge=0)
    #: how long an API process remembers that a key id is unknown (never made, or
    #: revoked) and answers it 401 without asking Redis; a key made after its id was
    #: remembered works that many seconds later at most (0 = ask Redis every time)
    api_negative_key_ttl_s: float = Field(default=5.0, ge=0)
    #: failed authentications per client address: token bucket refill (per second) and
    #: burst, per API process; past them an address gets 429s that cost Redis nothing
    api_auth_failures_per_s: float = Field(default=1.0, gt=0)
    api_auth_failures_burst: int = Field(default=20, ge=1)
    #: proxies in front of the API that append to X-Forwarded-For: the client address
    #: is the entry the outermost of them wrote (0 = the header is ignored)
    api_trusted_proxies: int = Field(default=0, ge=0)
    #: how long an API process trusts the merge policies made through the API that it
    #: read: a new or changed one reaches every process within this many seconds
    api_policy_cache_s: float = Field(default=2.0, ge=0)
    #: largest request body the API accepts (a bigger one is a 413 before it is read)
    api_max_body_bytes: int = Field(default=65_536, ge=0)
    #: how long an HTTP ingest call waits for the broker to acknowledge its events (503 after)
    ingest_timeout_s: float = Field(default=5.0, gt=0)
    #: per write key: HTTP ingest calls/s (token bucket refill) and burst (default twice
    #: the rate), the bucket shared by every API process in Redis; unset: no limit, and
    #: ingest makes no Redis round trip
    write_key_rate_per_s: float | None = Field(default=None, gt=0)
    write_key_burst: int | None = Field(default=None, ge=1)
    #: Treasure Data personalization services, tokens and offers (`api.td_config`)
    personalization_file: Path | None = None
    #: how long `/readyz` waits for Redis to answer a PING
    api_ready_timeout_s: float = Field(default=0.5, gt=0)
    #: where export jobs write their files (a job names a file in it); unset: HOME/exports
    export_dir: Path | None = None
    #: profiles an export job reads per second, and per round (one MGET; each SCAN's
    #: COUNT), unless the job says otherwise: its load on Redis
    export_rate_per_s: float = Field(default=5000.0, gt=0)
    export_batch: int = Field(default=500, ge=1, le=10_000)
    #: how long an export job's runner holds it without saving progress; once it is
    #: over (the runner died), another runner takes the job over
    export_lease_s: float = Field(default=15.0, gt=0)
    #: whether API processes run export jobs: those made through the API, and any
    #: whose runner died
    export_in_api: bool = True

    #: profile states a source delete job reads per second, and per round (a SCAN's
    #: COUNT, one MGET): its load on Redis (`traitflow.source_jobs`)
    source_job_rate_per_s: float = Field(default=2000.0, gt=0)
    source_job_batch: int = Field(default=200, ge=1, le=10_000)
    #: whether API processes run source delete jobs: those made through the API, and
    #: any whose runner died (its lease ran out)
    source_jobs_in_api: bool = True
