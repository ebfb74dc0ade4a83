"""Every exception traitflow raises on purpose, under one root: `TraitflowError`.

`except TraitflowError` catches what traitflow means to raise, and nothing else: a
`TypeError`, `KeyError` or plain `ValueError` from traitflow's code is a bug, and is
never reported as the user's mistake. The root and the groups below it live here, in
the lowest layer, so that every package can derive from them; each concrete class
lives in the module that raises it:

    TraitflowError
    ├── RuleError                 rules a user wrote are wrong: refused at load, never per event
    │   ├── RuleFileError         attributes.rules: every problem of a rule file, each with
    │   │   │                     file, line, name (an attribute's, an audience's) and what
    │   │   │                     is wrong (`problems`, `RuleProblem`s)
    │   │   └── PersonalizationFileError  api.td_config: every problem of the
    │   │                         personalization file, the same `RuleProblem`s naming
    │   │                         services
    │   ├── ExpressionError       attributes.expressions: a CEL expression that does not
    │   │                         compile (syntax, unknown name, type)
    │   ├── InvalidPath           attributes.paths: a field path (`propertes.revenue`)
    │   ├── InvalidPattern        attributes.expressions.regex: a pattern RE2 cannot compile
    │   ├── DerivedCycle          attributes.derived: derived attributes that read each other
    │   └── LifecycleError        attributes.catalog: a change of a computed attribute that
    │                             its lifecycle refuses (`field` names what)
    ├── DataError                 data met at run time does not fit a rule: that event, or
    │   │                         that one attribute, alone is affected; nothing stops
    │   ├── InvalidEvent          attributes.events: no event, or over a limit: dead-lettered
    │   ├── Rejected              attributes.aggregators: a value one attribute cannot take:
    │   │   │                     skipped for it, counted by `kind`
    │   │   └── OutsideWindow     attributes.windows: before the window, or past its lateness
    │   └── EvaluationError       attributes.expressions: a valid expression failed on these
    │                             values (the filter skips, the derived attribute is null)
    ├── InputError                a value a person gave a command or a request is wrong
    │   ├── InvalidKeyParameters  api.keys: a new API key's name, rate or burst
    │   ├── InvalidService        attributes.offers: a personalization service whose offers
    │   │                         do not compile, or that names what is not configured
    │   ├── InvalidEventObject    attributes.offers: a personalization call's body (TD's 3004)
    │   ├── TdRefusal             api.td: a personalization call refused (TD's code, 415, 429)
    │   ├── InvalidSince          traitflow.replay: `dead-letters replay --since`
    │   ├── InvalidExport         traitflow.export_jobs: an export naming an unknown entity or
    │   │                         audience, a file with a path, a bad topic, rate or batch
    │   ├── InvalidErasure        traitflow.erasure_requests: an erase naming no identity of
    │   │                         the entity (unknown type, empty or too long a value)
    │   ├── InvalidSourceJob      traitflow.source_jobs: a source delete job naming a source
    │   │                         no ingest topic is bound to
    │   ├── UnknownAttribute      traitflow.rule_changes: no computed attribute has that id
    │   │                         (the API's 404; `traitflow rules` exits 2)
    │   ├── ConfiguredAttribute   traitflow.rule_changes: a change of a rule file attribute,
    │   │                         read-only through the API (409) and `traitflow rules`
    │   └── BodyTooLarge          api.middleware: a request body over the limit (413); also
    │                             a starlette `HTTPException`, which FastAPI passes on
    ├── StoreError                Redis failed, refused, or changed under a conditional write
    │   ├── RespError             traitflow.resp: an error reply (`code`: OOM, READONLY, ...)
    │   ├── RespConnectionError   traitflow.resp: connection lost, refused or closed; also a
    │   │   │                     `ConnectionError`, an OSError: the worker retries it as
    │   │   │                     transient, the API answers 503
    │   │   └── RespTimeoutError  traitflow.resp: no answer in time; also a `TimeoutError`
    │   ├── Conflict              traitflow.store: a commit's reads changed: computed again
    │   ├── RulesChanged          traitflow.store: a commit computed with rules older than
    │   │                         the current version: the worker switches, computes again
    │   ├── NotDurable            traitflow.durability: writes not on disk/replicas in time
    │   ├── ClusterAccessRefused  traitflow.redis_cluster_access: a cluster node refused the
    │   │                         TLS handshake or the credentials: not tried again; also a
    │   │                         redis-py `RedisError`, as the error it replaces
    │   ├── SpreadUnsupported     traitflow.spread_plan: a write the spread layout cannot
    │   │                         make yet (rules changes, source jobs): refused
    │   └── UnsafeRedis           traitflow.redis_checks: a Redis that could lose traitflow's keys
    │       └── RedisRefused      traitflow.redis_checks: Redis refused the credentials, the
    │                             TLS handshake failed, or the ACL user lacks a permission
    ├── ComputeFailed             streams.entity: computing a batch raised (a bug some input
    │                             meets): the batch is split until that event is dead-lettered
    ├── ServiceError              traitflow.services: an embedded broker or Redis could not be
    │                             started or wiped
    ├── DemoError                 traitflow.demo: the demo did not serve the expected profile
    ├── ReplayError               traitflow.replay: a replay cannot run (another one holds the lock)
    ├── ExportRefused             traitflow.export_jobs: an export job cannot be run now
    │                             (unknown, finished, or another runner holds its lease)
    ├── DestinationChanged        traitflow.export_run: an export's file is shorter than what
    │                             the job wrote into it: the job fails
    ├── PublishFailed             api.publisher: the broker did not acknowledge an ingest call's
    │                             events in time: answered 503
    └── ApiError                  api.errors: answered as JSON `{field: message}` with `status`

`tests/unit/test_errors.py` checks that every exception class of the four packages
derives from `TraitflowError`, and that this tree names each of them under a base of it.

Pydantic validators (`attributes.specs`, `attributes.identities`, `traitflow.config`)
raise plain `ValueError`: that is pydantic's contract for a validation message, and
pydantic turns it into a `ValidationError` naming the key; the rule loader reports
those per attribute as rule problems.
"""

from __future__ import annotations


class TraitflowError(Exception):
    """The root: every exception traitflow raises on purpose derives from it."""


class RuleError(TraitflowError):
    """Something a user wrote in a rule (a rule file, an expression, a field path, a
    pattern) is wrong; the message says what."""


class DataError(TraitflowError):
    """Data met at run time (an event, the values an expression reads) does not fit a
    rule: that event, or that one attribute of it, is dead-lettered, skipped or null."""


class InputError(TraitflowError):
    """A value a person gave a command or a request is wrong; the message says which."""


class StoreError(TraitflowError):
    """The profile store (Redis) failed, refused a command, or changed under a
    conditional write."""
