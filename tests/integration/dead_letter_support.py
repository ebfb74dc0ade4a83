"""What the dead-letter and stall tests share: the `traitflow dead-letters` CLI run
with a test's settings, and a worker's metrics as scraped."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner, Result

from streams.dead_letters import Letter, RedisParking, letter_from_record
from traitflow.cli import app
from traitflow.config import Settings
from traitflow.topics import read_topic

runner = CliRunner()


def dead_letters_cli(settings: Settings, *arguments: str) -> Result:
    """`traitflow dead-letters ARGUMENTS` in this process, with exactly `settings`."""
    result = runner.invoke(app, ["dead-letters", *arguments], env=settings.as_env())
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def parked_letters(settings: Settings) -> list[Letter]:
    async def read() -> list[Letter]:
        parking = RedisParking.from_url(settings.redis_url, settings.key_prefix)
        try:
            return await parking.all()
        finally:
            await parking.close()

    return asyncio.run(read())


def scrape(settings: Settings) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The worker's metrics: (sample name, sorted labels) -> value."""
    text = httpx.get(f"http://{settings.api_host}:{settings.worker_metrics_port}/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def samples_named(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str
) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        labels: value for (sample_name, labels), value in samples.items() if sample_name == name
    }


def topic_letters(settings: Settings) -> list[Letter]:
    """The letters on the dead-letter topic of `settings`, by partition and offset."""
    records = asyncio.run(read_topic(settings, settings.dead_letter_topic, idle_s=0.3))
    return [
        letter_from_record(r.partition, r.offset, r.timestamp, r.value, r.headers) for r in records
    ]


def first_column(output: str) -> list[str]:
    """The first cell of each line of a table the CLI printed."""
    return [line.split()[0] for line in output.splitlines() if line.strip()]
