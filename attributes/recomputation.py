"""Recomputing every attribute without the history some sources sent: what a source
delete job asks of computed attributes (`traitflow.source_jobs`). Attribute states do
not record which source fed them, so the only way to take a source's events out of
them is to compute them again from the events of the others.

How, without serving partial values meanwhile:

1. The job asks for it when its scan begins, which is a change of the rules version:
   that version is the *horizon* of the source's topics. What the workers computed of
   them before they switched to it, every backfill leaves out from then on; what the
   source sends later counts (`Horizons`; `streams.history.after_horizon`).
2. The recomputation starts at a rules version, and that version is its *generation*:
   from it on, the workers compute each attribute twice, the served states and states
   of the new generation beside them (`attributes.rules.Generations`, `RuleSet.
   shadows`). Profiles go on being served the values they had.
3. The backfill computes the new generation over the history retained in the ingest
   topics, but what the horizons exclude, and joins it with what the workers computed
   live since the start (`streams.backfill`), as it does for a new attribute.
4. Then the new generation is served; every attribute that was PROCESSING is ACTIVE
   (its history is in the new generation too), and the recomputation is *rendering*:
   a view is rendered when its profile is written, so the backfill writes every
   profile once more, each view then showing the new generation's values. The old
   states are dropped at those writes (`attributes.profile.reconcile`).
5. Then the recomputation is done, and its jobs are listed as recomputed.

A change of the attributes while one computes starts it again at the change's
version, with a generation of that version: the states begun before would lack the
changed attribute's (`restarted`). A second source delete job joins the running one the
same way (and one that is rendering: its jobs are done when the new one is).

Pure: the catalog (`traitflow.rule_catalog`) stores what these return.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["RECOMPUTED_KEPT", "Horizons", "Recomputation", "kept_jobs", "widened"]

#: ingest topic -> its horizon, a rules version: what the workers computed of the topic
#: before they switched to it is left out of every backfill (a source delete job's)
Horizons = Mapping[str, int]

#: how many jobs whose recomputation is done the catalog remembers (a job shows it)
RECOMPUTED_KEPT = 1000


@dataclass(frozen=True, slots=True)
class Recomputation:
    """A recomputation in progress: the rules version it (last) started at, which is
    the generation of the states it computes, and the jobs it is for."""

    version: int
    jobs: tuple[str, ...]
    #: whether its generation is served, and the views are being rendered again
    rendering: bool = False
    #: what its backfill has done (`streams.backfill`)
    progress: Mapping[str, Any] = field(default_factory=dict)

    @property
    def computing(self) -> int | None:
        """The generation computed beside the served one, if it is still computed."""
        return None if self.rendering else self.version

    def as_json(self) -> dict[str, Any]:
        return {"version": self.version, "jobs": list(self.jobs), "rendering": self.rendering}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Recomputation:
        jobs = tuple(str(job) for job in data["jobs"])
        return cls(int(data["version"]), jobs, bool(data.get("rendering")))

    def joined(self, job: str, version: int) -> Recomputation:
        """This one started again at `version`, for `job` as well."""
        jobs = self.jobs if job in self.jobs else (*self.jobs, job)
        return Recomputation(version, jobs)

    def restarted(self, version: int) -> Recomputation:
        """Started again at `version` (the attributes changed): a generation of its own."""
        return replace(self, version=version, progress={})


def widened(horizons: Horizons, topics: Collection[str], version: int) -> dict[str, int]:
    """`horizons` with `topics` left out up to rules `version` (a later horizon)."""
    return {**horizons, **{topic: max(version, horizons.get(topic, 0)) for topic in topics}}


def kept_jobs(done: Sequence[str], jobs: Sequence[str]) -> tuple[str, ...]:
    """`done` with `jobs` after it, the newest `RECOMPUTED_KEPT`."""
    return (*done, *(job for job in jobs if job not in done))[-RECOMPUTED_KEPT:]
