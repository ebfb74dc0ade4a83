"""The API's services, typed: what every route, middleware and handler works with.

The app factory (`api.app.create_app`) makes one `ApiState` and attaches it to the app
(`attach`); routes get it with `services(request)`, never as loose attributes of
`app.state`, so that what a route may use is declared here and checked by mypy, and a
new service is one field. This module is the only one that touches `app.state`
(tests/unit/test_api_state.py checks that).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.applications import Starlette
from starlette.requests import Request

from api.auth_limits import FailureLimits, UnknownKeys
from api.instrumented import ApiMetrics
from api.keys import KeyStore
from api.policy_store import PolicyStore
from api.publisher import Publisher
from api.td_services import Personalization
from attributes.identities import IdentityRules
from traitflow.config import Settings
from traitflow.export_run import ExportRunner
from traitflow.export_store import ExportJobs
from traitflow.rule_catalog import RuleCatalog
from traitflow.source_jobs import SourceJobStore
from traitflow.store import ProfileStore

#: the one attribute of `app.state` the API uses
ATTRIBUTE = "traitflow"


class ApiState:
    """The settings, the metrics and the identity rules, fixed when the app is made;
    the profile store, the key store and the merge-policy store, set by the app's
    lifespan while it runs (their Redis connections open and close with it), and
    absent before: a request then fails as one on a closed app would."""

    __slots__ = (
        "auth_failures",
        "catalog",
        "export_runner",
        "exports",
        "identities",
        "keys",
        "metrics",
        "personalization",
        "policies",
        "publisher",
        "settings",
        "source_jobs",
        "store",
        "unknown_keys",
    )

    settings: Settings
    metrics: ApiMetrics
    #: entity -> its identity rules: lookups are normalised as the worker indexed them
    identities: Mapping[str, IdentityRules]
    store: ProfileStore
    #: the API keys (`api.auth`)
    keys: KeyStore
    #: key ids Redis did not have, and failed authentications per client address:
    #: this process's own memory, so that abuse costs Redis nothing (`api.auth_limits`)
    unknown_keys: UnknownKeys
    auth_failures: FailureLimits
    #: merge policies made through the API (`api.merge_policies`)
    policies: PolicyStore
    #: computed attributes made through the API (`api.computed_attributes`)
    catalog: RuleCatalog
    #: where ingest publishes events (`api.ingest`, `api.publisher`)
    publisher: Publisher
    #: Treasure Data personalization services (`api.td`, `api.td_admin`)
    personalization: Personalization
    #: source delete jobs (`api.source_jobs`)
    source_jobs: SourceJobStore
    #: export jobs (`api.exports`), and this process's runner of them (None: it runs
    #: none, `TRAITFLOW_EXPORT_IN_API` off or an app given its stores)
    exports: ExportJobs
    export_runner: ExportRunner | None

    def __init__(self, settings: Settings, metrics: ApiMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.identities = {
            entity: IdentityRules(spec) for entity, spec in settings.entities.items()
        }
        self.export_runner = None
        self.unknown_keys = UnknownKeys(settings.api_negative_key_ttl_s)
        self.auth_failures = FailureLimits(
            settings.api_auth_failures_per_s, settings.api_auth_failures_burst
        )

    def is_open(self) -> bool:
        """Whether the lifespan has set the stores (`/readyz` asks)."""
        return all(hasattr(self, name) for name in ("store", "keys", "policies"))


def attach(app: Starlette, state: ApiState) -> None:
    """Make `state` the services of `app`."""
    setattr(app.state, ATTRIBUTE, state)


def state_of(app: Starlette) -> ApiState:
    """The services of `app`; an app made without them is a bug (AttributeError)."""
    state: ApiState = getattr(app.state, ATTRIBUTE)
    return state


def services(request: Request) -> ApiState:
    """The services of the app serving `request`: what a route uses."""
    state: ApiState = getattr(request.app.state, ATTRIBUTE)
    return state


def services_if_any(request: Request) -> ApiState | None:
    """The services, or None in an app made without them (an exception handler
    installed on a bare app in a test)."""
    state = getattr(request.app.state, ATTRIBUTE, None)
    return state if isinstance(state, ApiState) else None
