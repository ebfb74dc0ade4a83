"""What abuse costs Redis: commands per second while clients hammer one `traitflow api`.

    python -m bench.abuse [--duration 10 --connections 32 --pace-ms 5] [--api-root DIR]

Starts a redis-server of its own (its counters then count only what the API sends),
seeds profiles (`bench.api.seed`), makes two API keys (one with a rate limit out of
reach, one limited to 1 request/s), starts one API process (its background job
runners off, so that Redis sees only what requests cost) and runs wrk (paced
connections: `--connections` each waiting `--pace-ms` between a response and their
next request, about 5k req/s per client when the API keeps up) in phases of
`--duration` seconds:

- `idle`: nothing sent (what Redis does by itself);
- `legitimate`: record reads by `user_id` of seeded users with the unlimited key;
- `throttled key`: the same reads with the limited key (all but one a second: 429);
- `random tokens`: a well-formed token with a random key id per request (401, then
  429 once the address failed too often);
- `both abusers`: the last two at once, each from its own wrk.

Per phase: each client's requests/s and share of non-2xx answers; from Redis (deltas of
`INFO commandstats`, which counts the commands a script runs as well as the script):
commands per second and per request, scripts (EVALSHA) per second, and GETs per second
(key-record lookups and profile reads: both are GETs, inside the read scripts or not);
the API process's CPU.

`--api-root DIR` runs the API from another checkout (e.g. `git archive` of an older
commit unpacked in DIR) with this venv: the same phases before and after a change.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench.api import LUA_PACE, ROOT, create_key, seed, wait_for_api
from traitflow.config import Settings
from traitflow.services import Daemon, Service, free_port

READ = "/v1/collections/users/records/user_id/bench-user-"

LUA_READ = """
math.randomseed(%(seed)d)
request = function()
  return wrk.format("GET", "%(path)s" .. math.random(0, %(last)d))
end
"""

LUA_RANDOM_TOKENS = """
math.randomseed(%(seed)d)
local secret = string.rep("a", 43)
request = function()
  local id = string.format("%%06x%%06x", math.random(0, 16777215), math.random(0, 16777215))
  local headers = {["Authorization"] = "Bearer tf_" .. id .. "_" .. secret}
  return wrk.format("GET", "%(path)s" .. math.random(0, %(last)d), headers)
end
"""


@dataclass(frozen=True)
class Client:
    label: str
    lua: str
    #: the Authorization header wrk sends (None: the script sets its own)
    token: str | None


def start_wrk(
    url: str, client: Client, args: argparse.Namespace, last: int
) -> subprocess.Popen[str]:
    script = client.lua % {"seed": hash(client.label) & 0xFFFF, "path": READ, "last": last}
    script += LUA_PACE % {"pace": args.pace_ms}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(script)
    command = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "-s", file.name]
    if client.token is not None:
        command += ["-H", f"Authorization: Bearer {client.token}"]
    return subprocess.Popen([*command, url], stdout=subprocess.PIPE, text=True)


def wrk_result(process: subprocess.Popen[str]) -> tuple[float, float]:
    """(requests/s, share of non-2xx answers) of a finished wrk."""
    output, _ = process.communicate()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    assert rps is not None, output
    assert total is not None, output
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    refused = int(non_2xx[1]) if non_2xx else 0
    return float(rps[1]), refused / max(1, int(total[1]))


def redis_counts(client: redis.Redis) -> tuple[int, int, int]:
    """(commands run, those inside scripts included; scripts run; GETs run) so far."""
    stats: dict[str, Any] = client.info("commandstats")

    def calls(name: str) -> int:
        return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))

    run = sum(int(entry["calls"]) for entry in stats.values())
    return run, calls("evalsha") + calls("eval"), calls("get")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phase(
    label: str,
    clients: list[Client],
    url: str,
    args: argparse.Namespace,
    client: redis.Redis,
    api_pid: int,
) -> None:
    before, cpu_before, started = redis_counts(client), cpu_seconds(api_pid), time.monotonic()
    running = [start_wrk(url, one, args, args.profiles - 1) for one in clients]
    if not running:
        time.sleep(args.duration)
    results = [wrk_result(process) for process in running]
    elapsed = time.monotonic() - started
    after, cpu_after = redis_counts(client), cpu_seconds(api_pid)
    run, scripts, gets = ((b - a) / elapsed for a, b in zip(before, after, strict=True))
    sent = "; ".join(
        f"{one.label} {rps:,.0f} req/s ({refused:.0%} non-2xx)"
        for one, (rps, refused) in zip(clients, results, strict=True)
    )
    requests = sum(rps for rps, _ in results)
    per_request = f"{run / requests:.2f}" if requests else "-"
    print(
        f"| {label} | {sent or '-'} | {run:,.0f} | {per_request} | {scripts:,.0f} | {gets:,.0f} "
        f"| {(cpu_after - cpu_before) / elapsed:.0%} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=2_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pace-ms", type=int, default=5)
    parser.add_argument("--api-root", type=Path, default=ROOT, help="the checkout to serve from")
    args = parser.parse_args()

    # a redis-server of its own: its counters then hold what this API sends, nothing else
    home = Path(tempfile.mkdtemp(prefix="traitflow-bench-abuse-"))
    server = Service("redis", home / "redis", "127.0.0.1", free_port())
    server.start()
    settings = Settings.from_environ(
        os.environ,
        redis_url=f"redis://{server.host}:{server.port}/0",
        key_prefix=f"bench-abuse-{uuid.uuid4().hex[:8]}",
        source_jobs_in_api=False,
        export_in_api=False,
    )
    asyncio.run(seed(settings, args.profiles))
    legitimate = asyncio.run(create_key(settings, "bench-abuse"))
    throttled = asyncio.run(create_key(settings, "bench-abuse", rate_per_s=1.0, burst=1))
    port = free_port()
    daemon = Daemon("bench-abuse", home / "api")
    process = daemon.spawn(
        [sys.executable, "-m", "traitflow", "api", "--port", str(port)],
        settings.child_env(),
        args.api_root,
    )
    url = f"http://127.0.0.1:{port}"
    client = redis.Redis.from_url(settings.redis_url)
    reader = Client("legitimate", LUA_READ, legitimate)
    limited = Client("throttled key", LUA_READ, throttled)
    random_tokens = Client("random tokens", LUA_RANDOM_TOKENS, None)
    try:
        wait_for_api(url)
        print(
            f"{args.profiles} profiles, 1 API process from {args.api_root}, per client: wrk "
            f"-t1 -c{args.connections}, {args.pace_ms} ms between a response and the next "
            f"request, {args.duration} s per phase\n"
        )
        print("| phase | clients | Redis commands/s | per request | scripts/s | GETs/s | API CPU |")
        print("|---|---|---|---|---|---|---|")
        phase("idle", [], url, args, client, process.pid)
        for label, clients in (
            ("legitimate", [reader]),
            ("throttled key", [limited]),
            ("random tokens", [random_tokens]),
            ("both abusers", [limited, random_tokens]),
        ):
            phase(label, clients, url, args, client, process.pid)
    finally:
        daemon.stop()
        client.close()
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
