"""A batch's computed effect, and how it splits when its commit finds a conflict.

A batch's events fall into independent parts: events that share an identity, or whose
identities point to the same profile, or that would make the same new profile, are
in one part; nothing one part reads (a pointer, a profile's state) is read or
written by another. When the commit finds that another worker changed something the
batch read (`Conflict` names all of it), only the parts that read those things are
stale. `split` keeps the rest, whose writes are still exactly right, to commit, and
hands back the stale parts' events to be computed again on fresh reads. With two
workers writing the same people (stitching sends one person's events through several
partitions), this is the difference between redoing a few events and redoing the
whole batch, again and again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from streams.records import BatchReport, Identified
from traitflow.store import Conflict, Expected, Identity, ProfileWrite

#: a part's members: identities and profile ids (tuples and strings never collide)
Node = Identity | str


@dataclass(slots=True)
class Stitched:
    """A batch's effect, computed and ready to commit."""

    #: the events it is the effect of
    events: list[Identified]
    #: where their identities pointed when read (gone profiles included)
    pointers: dict[Identity, str]
    writes: list[ProfileWrite] = field(default_factory=list)
    #: profiles merged into others: deleted by the commit
    removed: list[str] = field(default_factory=list)
    expected: Expected = field(default_factory=Expected)
    #: every profile whose state was loaded or made (to forget if the commit fails)
    profiles: list[str] = field(default_factory=list)
    #: profile -> what was found applying the batch to it (duplicates, skips,
    #: refusals, merges), kept apart so that a part committed alone reports its own
    findings: dict[str, BatchReport] = field(default_factory=dict)
    #: events skipped as redelivered: their offset is applied to their profile
    #: (`streams.rule_versions` notes them when its start note at a version is new)
    redelivered: list[Identified] = field(default_factory=list)

    def found(self, profile: str) -> BatchReport:
        findings = self.findings.get(profile)
        if findings is None:
            findings = self.findings[profile] = BatchReport()
        return findings

    def report_to(self, report: BatchReport) -> None:
        """Add this (committed) effect to the batch's report."""
        report.profiles_written += len(self.writes)
        for findings in self.findings.values():
            report.duplicates += findings.duplicates
            report.skips += findings.skips
            report.refusals += findings.refusals
            report.merges += findings.merges
            report.erasures += findings.erasures


class Parts:
    """Union-find over the nodes a batch's events read: each root is one part."""

    def __init__(self) -> None:
        self._parent: dict[Node, Node] = {}

    def join(self, nodes: Iterable[Node]) -> None:
        first: Node | None = None
        for node in nodes:
            root = self.root(node)
            if first is None:
                first = root
            elif root != first:
                self._parent[root] = first

    def __contains__(self, node: Node) -> bool:
        return node in self._parent

    def root(self, node: Node) -> Node:
        parent = self._parent.setdefault(node, node)
        while parent != node:  # path halving keeps later finds short
            grand = self._parent[parent]
            self._parent[node] = grand
            node, parent = parent, grand
        return node


def split(
    stitched: Stitched, conflict: Conflict, profile_id: Callable[[str, str], str]
) -> tuple[Stitched, Stitched]:
    """(the parts that read nothing `conflict` names, the parts that did). The first
    is complete and can be committed as is; of the second, only `events` and
    `profiles` (to forget) are filled in. `profile_id` is the id a new identity's
    profile gets (`IdentityRules.profile_id`)."""
    parts = Parts()
    pointers = stitched.pointers
    for item in stitched.events:
        nodes: list[Node] = [profile_id(*item.ids[0])]
        for identity in (*item.ids, *item.previous):
            nodes.append(identity)
            if (pid := pointers.get(identity)) is not None:
                nodes.append(pid)
        parts.join(nodes)
    named: list[Node] = [*conflict.pointers, *conflict.profiles]
    stale = {parts.root(node) for node in named if node in parts}
    if not stale:  # a conflict on nothing this batch read cannot be: redo all of it
        stale = {parts.root(item.ids[0]) for item in stitched.events}

    def fresh(node: Node) -> bool:
        return parts.root(node) not in stale

    expected = stitched.expected
    kept = Stitched(
        [item for item in stitched.events if fresh(item.ids[0])],
        {identity: pid for identity, pid in pointers.items() if fresh(identity)},
        [write for write in stitched.writes if fresh(write.state.id)],
        [pid for pid in stitched.removed if fresh(pid)],
        Expected(
            {identity: pid for identity, pid in expected.pointers.items() if fresh(identity)},
            {pid: version for pid, version in expected.versions.items() if fresh(pid)},
        ),
        [pid for pid in stitched.profiles if fresh(pid)],
        {pid: found for pid, found in stitched.findings.items() if fresh(pid)},
    )
    redo = Stitched(
        [item for item in stitched.events if not fresh(item.ids[0])],
        {},
        profiles=[pid for pid in stitched.profiles if not fresh(pid)],
    )
    return kept, redo


def committed_events(
    stitched: Stitched, committed: frozenset[str], profile_id: Callable[[str, str], str]
) -> list[Identified]:
    """The events of `stitched` whose parts committed, given the profiles whose writes
    did (`Conflict.committed`, `RulesChanged.committed`: on the spread layout a commit
    is atomic per bucket): the parts that write no profile of the others."""
    if not committed:
        return []
    written = {write.state.id for write in stitched.writes} | set(stitched.removed)
    refused = written - committed
    if not refused:
        return list(stitched.events)
    done, _ = split(stitched, Conflict(profiles=refused), profile_id)
    return done.events
