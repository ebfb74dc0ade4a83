"""Trusted links on a real worker, broker, Redis and API (issue 17, point 4).

The attack: anyone holding a browser source's (public) write key sends an `identify`
with their own anonymousId and a victim's email. Linked, a read by that anonymousId
(the attacker's browser asking for its personalisation) would serve the victim's
profile. From an untrusted source the worker applies the event without the link,
counts the refusal and logs it; the same event from a trusted source links as before.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Publisher, create_key, wait_until
from tests.integration.dead_letter_support import sample, scrape
from tests.integration.workers import running_api, worker_log, worker_with_rules
from traitflow.config import Settings
from traitflow.services import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_an_untrusted_sources_identify_does_not_give_the_attacker_the_victims_profile(
    settings: Settings, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:6]
    name = f"tftrust-{run}"
    crm_topic, web_topic = f"{name}-crm", f"{name}-web"
    victim, attacker, insider = f"victim-{run}", f"a-attacker-{run}", f"a-insider-{run}"
    mail = f"victim-{run}@x.io"
    rules = (ROOT / "examples" / "rules.yaml").read_text()
    with worker_with_rules(
        settings,
        tmp_path,
        rules,
        name,
        sources={crm_topic: "crm", web_topic: "web"},
        source_trust={"crm": "trusted"},  # web says nothing: untrusted
        worker_metrics_port=free_port(),
    ) as own:
        crm, web = Publisher(own.settings, crm_topic), Publisher(own.settings, web_topic)
        token = create_key(own.settings, f"trust-{run}", collections=["users"])
        with (
            running_api(own.settings, "api") as url,
            httpx.Client(
                base_url=url, timeout=5, headers={"Authorization": f"Bearer {token}"}
            ) as api,
        ):

            def read(index: str, value: str) -> Any:
                response = api.get(f"/v1/collections/users/records/{index}/{value}")
                return response.json() if response.status_code == 200 else None

            crm(
                [
                    {
                        "type": "identify",
                        "userId": victim,
                        "traits": {"email": mail, "plan": "gold"},
                    },
                    {
                        "type": "track",
                        "event": "Order Completed",
                        "userId": victim,
                        "properties": {"revenue": 250.0, "product_id": "sku-1"},
                    },
                ]
            )
            wait_until(
                lambda: (
                    (read("email", mail) or {}).get("attributes", {}).get("lifetime_value") == 250.0
                ),
                timeout=60,
                what="the victim's profile",
            )

            # the attack, from the untrusted browser source
            web(
                [
                    {"type": "identify", "anonymousId": attacker, "traits": {"email": mail}},
                    {"type": "page", "anonymousId": attacker},
                ]
            )
            served = wait_until(
                lambda: (
                    (found := read("anonymous_id", attacker))
                    and found["attributes"].get("page_views") == 1
                    and found
                ),
                timeout=30,
                what="the attacker's events applied",
            )
            assert served["id"] == f"anonymous_id:{attacker}"
            assert served["identities"] == {"anonymous_id": [attacker]}
            assert served["traits"].get("plan") is None
            assert served["attributes"].get("lifetime_value") in (None, 0, 0.0)
            profile = read("user_id", victim)
            assert attacker not in profile["identities"].get("anonymous_id", [])
            assert profile["attributes"]["lifetime_value"] == 250.0
            samples = scrape(own.settings)
            refused = sample(
                samples, "traitflow_identity_links_refused_total", source="web", reason="merge"
            )
            assert refused == 1
            assert "identity link refused: email" in worker_log(own.worker)

            # the same event from the trusted CRM links, as every source did before
            crm([{"type": "identify", "anonymousId": insider, "traits": {"email": mail}}])
            linked = wait_until(
                lambda: read("anonymous_id", insider), timeout=30, what="the trusted link"
            )
            assert linked["id"] == victim
            assert linked["attributes"]["lifetime_value"] == 250.0
            after = scrape(own.settings)
            assert (
                sample(
                    after, "traitflow_identity_links_refused_total", source="web", reason="merge"
                )
                == 1
            )
            assert (
                sample(
                    after, "traitflow_identity_links_refused_total", source="crm", reason="merge"
                )
                == 0
            )
