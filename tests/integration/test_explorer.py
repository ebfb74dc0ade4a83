"""The profile explorer in a real headless browser: Debian's Chromium, driven by
Playwright, over a real `traitflow api` process, a real worker, broker and Redis.

An operator enters an admin key, looks a profile up by a secondary identity (its
email) and sees its attributes with their provenance, its traits with their source,
its identities and its audiences; the rules page lists the rule file's rules. Along the
way: the key stays out of every URL and cookie, a non-admin key is refused with a
message, a trait holding markup shows as text, and the page loads nothing but this
API's own files without a single console error (a CSP violation is one).

Without Chromium this test fails, it does not skip: `make setup` installs it
(scripts/system-deps.sh). `EXPLORER_SCREENSHOTS_DIR=docs` makes it save the README's
screenshots there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from playwright.sync_api import Browser, Page, Route, sync_playwright

from tests.integration.conftest import Publisher, create_key, wait_until
from tests.integration.workers import alive, running_api, start_worker
from traitflow.config import Settings
from traitflow.key_layout import KeyLayout
from traitflow.topics import ensure_topics

pytestmark = pytest.mark.integration

RULES = """\
attributes:
  - name: lifetime_value
    description: Total revenue of completed orders.
    function: sum
    field: properties.revenue
    event: Order Completed
  - name: orders
    description: Number of completed orders.
    function: count
    event: Order Completed
  - name: last_product
    description: Product of the most recent order, by event time.
    function: most_recent
    field: properties.product_id
    event: Order Completed
  - name: orders_30d
    description: Orders in the last 30 days.
    function: count
    event: Order Completed
    lookback: {count: 30, unit: days}
  - name: big_spender
    description: Spent 500 or more.
    function: derived
    expression: lifetime_value >= 500.0
audiences:
  - name: buyers
    description: Ordered at least once.
    condition: orders > 0
  - name: big_spenders
    description: Spent 500 or more.
    condition: lifetime_value >= 500.0
"""
#: an attribute made through the computed-attributes API, live before the events
ORDERS_7D = {
    "name": "orders_7d",
    "function": "count",
    "event": "Order Completed",
    "lookback": {"count": 7, "unit": "days"},
    "description": "Orders in the last 7 days.",
}
#: one the rules test makes, as a draft
ORDERS_1D = {
    "name": "orders_1d",
    "function": "count",
    "event": "Order Completed",
    "lookback": {"count": 1, "unit": "days"},
    "description": "Orders in the last day.",
}
RULE_NAMES = ["lifetime_value", "orders", "last_product", "orders_30d", "big_spender"]

#: the name Debian's package gives the browser (`apt-get install chromium`)
CHROMIUM = "chromium"


def chromium() -> str:
    """Debian's Chromium; a machine without it fails this test rather than skip it."""
    found = shutil.which(CHROMIUM)
    if found is None:
        pytest.fail(
            "Chromium not found: `make setup` installs Debian's chromium package "
            "(scripts/system-deps.sh); Playwright drives it, its own download is not used"
        )
    return found


@dataclass
class Explored:
    """The API the browser talks to, and the profile there is to find."""

    url: str
    settings: Settings
    admin_key: str
    reader_key: str
    user: str
    anonymous: str
    email: str
    #: the rules version the profile was written at
    rules_version: int


@pytest.fixture(scope="module")
def explored(
    settings: Settings, redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Explored]:
    home = tmp_path_factory.mktemp("explorer")
    rules = home / "rules.yaml"
    rules.write_text(RULES)
    own = settings.isolated(
        f"tfexp-{uuid.uuid4().hex[:8]}", rules_path=rules, home=home, backfill=False
    )
    asyncio.run(ensure_topics(own))
    keys = KeyLayout(own.key_prefix)
    publish = Publisher(own, next(iter(own.sources)))
    tag = uuid.uuid4().hex[:8]
    user, anonymous, email = f"u-{tag}", f"a-{tag}", f"ada-{tag}@example.com"

    def view(pid: str) -> Any:
        raw = redis_client.get(keys.view("user", pid))
        return orjson.loads(raw) if raw else None

    worker = start_worker(own, "worker")
    try:
        with running_api(own, "explorer-api") as url:
            admin_key = create_key(own, "explorer-admin", admin=True)
            # an attribute made through the API: the worker switches to a new rules
            # version for it, which the view then names
            made = httpx.post(
                f"{url}/data/core/ca/attributes",
                headers={"Authorization": f"Bearer {admin_key}"},
                json={**ORDERS_7D, "status": "ACTIVE"},
                timeout=5.0,
            )
            assert made.status_code == 201, made.text
            traits = {"email": email, "plan": "pro", "nickname": "<b>Ada</b>"}
            order = {"type": "track", "event": "Order Completed", "userId": user}
            publish(
                [
                    {
                        "type": "identify",
                        "userId": user,
                        "anonymousId": anonymous,
                        "traits": traits,
                    },
                    {**order, "messageId": f"{tag}-1", "properties": {"revenue": 40.5}},
                    {
                        **order,
                        "messageId": f"{tag}-2",
                        "properties": {"revenue": 30.0, "product_id": "sku-b"},
                    },
                ]
            )
            written = wait_until(
                lambda: (
                    alive(worker)
                    and (v := view(user)) is not None
                    and v["attributes"].get("orders") == 2
                    and v["attributes"].get("orders_7d") == 2
                    and v["traits"].get("plan") == "pro"
                    and v
                ),
                timeout=90,
                what="the worker to write the profile under the new rules",
            )
            yield Explored(
                url,
                own,
                admin_key,
                create_key(own, "explorer-reader", collections=["users"]),
                user,
                anonymous,
                email,
                written["rules_version"],
            )
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Watched:
    page: Page
    #: console errors (a blocked script or style is one) and uncaught exceptions
    errors: list[str]
    #: every URL the page requested
    requested: list[str]


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    requested: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda r: requested.append(r.url))
    try:
        yield Watched(page, errors, requested)
    finally:
        context.close()


def screenshot(page: Page, name: str) -> None:
    """Save the README's screenshot when asked to (`EXPLORER_SCREENSHOTS_DIR`)."""
    folder = os.environ.get("EXPLORER_SCREENSHOTS_DIR")
    if folder:
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def enter_key(page: Page, key: str) -> None:
    page.fill("#key-input", key)
    page.click("#key-use")


def cells(page: Page, table: str, name: str) -> list[str]:
    """The texts of the row of `table` whose data-name is `name`."""
    row = page.locator(f"#{table} tbody tr[data-name='{name}']")
    return [text.strip() for text in row.locator("td").all_inner_texts()]


def test_a_profile_is_found_by_its_email_and_shown_whole(
    explored: Explored, watched: Watched
) -> None:
    page = watched.page
    page.goto(f"{explored.url}/explorer")
    page.wait_for_selector("#message:has-text('Enter an admin key')")

    enter_key(page, explored.admin_key)
    page.wait_for_selector("#lookup-form", state="visible")
    assert page.is_visible("#key-set")
    assert page.input_value("#key-input") == ""
    stored = page.evaluate("sessionStorage.getItem('traitflow.explorer.key')")
    assert stored == explored.admin_key

    page.select_option("#lookup-entity", "users")
    assert page.locator("#lookup-index option").all_inner_texts() == [
        "user_id",
        "email",
        "anonymous_id",
        "id",
    ]
    page.select_option("#lookup-index", "email")
    page.fill("#lookup-value", explored.email)
    page.click("#lookup-form button[type=submit]")
    page.wait_for_selector("#profile", state="visible")

    assert page.inner_text("#profile-id") == explored.user
    # every attribute was computed under the rules version the view names
    provenance = f"computed from the events of every source; rule version {explored.rules_version}"
    assert f"Rule version\n{explored.rules_version}" in page.inner_text("#profile-summary")
    assert cells(page, "attributes", "orders_7d") == ["orders_7d", "2", provenance]
    assert cells(page, "attributes", "lifetime_value") == ["lifetime_value", "70.5", provenance]
    assert cells(page, "attributes", "orders") == ["orders", "2", provenance]
    assert cells(page, "attributes", "last_product") == ["last_product", "sku-b", provenance]
    assert cells(page, "attributes", "big_spender") == ["big_spender", "false", provenance]

    source = next(iter(explored.settings.sources.values()))
    plan = cells(page, "traits", "plan")
    assert plan[:3] == ["plan", "pro", source]
    assert plan[3].endswith("Z")  # the event time the trait was sent with
    # markup an event sent is shown as text, never made into elements
    assert cells(page, "traits", "nickname")[:2] == ["nickname", "<b>Ada</b>"]
    assert page.locator("#traits b").count() == 0

    identities = page.locator("#identities tbody tr").evaluate_all(
        "rows => rows.map(row => row.dataset.name)"
    )
    assert sorted(identities) == sorted(
        [
            f"user_id:{explored.user}",
            f"anonymous_id:{explored.anonymous}",
            f"email:{explored.email}",
        ]
    )
    assert cells(page, "audiences", "buyers") == ["buyers", "yes", "Ordered at least once."]
    assert cells(page, "audiences", "big_spenders") == ["big_spenders", "no", "Spent 500 or more."]
    screenshot(page, "explorer-profile.png")
    assert watched.errors == []

    page.select_option("#lookup-index", "anonymous_id")
    page.fill("#lookup-value", "a-nobody")
    page.click("#lookup-form button[type=submit]")
    page.wait_for_selector("#message:has-text('No profile with anonymous_id')")
    assert page.is_hidden("#profile")

    # the key went out in headers only: no URL and no cookie ever held it
    assert watched.requested, "the page made no request"
    assert all(url.startswith(explored.url) for url in watched.requested), watched.requested
    assert not [url for url in watched.requested if explored.admin_key in url]
    assert explored.admin_key not in page.url
    assert page.context.cookies() == []
    assert watched.errors == [
        "Failed to load resource: the server responded with a status of 404 (Not Found)"
    ]  # the record read that found nothing


def test_the_rules_page_lists_the_rules(explored: Explored, watched: Watched) -> None:
    # attributes made through the computed-attributes API follow the file's: one live
    # (made by the fixture), one a draft
    headers = {"Authorization": f"Bearer {explored.admin_key}"}
    made = httpx.post(
        f"{explored.url}/data/core/ca/attributes",
        headers=headers,
        json={**ORDERS_1D, "status": "DRAFT"},
        timeout=5.0,
    )
    assert made.status_code == 201, made.text
    page = watched.page
    page.goto(f"{explored.url}/explorer/rules")
    enter_key(page, explored.admin_key)
    page.wait_for_selector("#rules-section", state="visible")
    names = page.locator("#rules tbody tr").evaluate_all(
        "rows => rows.map(row => row.dataset.name)"
    )
    assert names == [*RULE_NAMES, "orders_7d", "orders_1d"]
    assert cells(page, "rules", "orders_7d")[:6] == [
        "orders_7d",
        "user",
        "count",
        "7 days",
        "Orders in the last 7 days.",
        "API",
    ]
    assert cells(page, "rules", "orders_1d")[5:] == ["API", "DRAFT", "—"]
    assert page.inner_text("#rules-version").startswith("rules version ")
    assert cells(page, "rules", "orders_30d") == [
        "orders_30d",
        "user",
        "count",
        "30 days",
        "Orders in the last 30 days.",
        "rule file",
        "ACTIVE",
        "—",
    ]
    assert cells(page, "rules", "big_spender")[2] == "derived"
    screenshot(page, "explorer-rules.png")

    # the key is the tab's: another page of the explorer in it needs no new entry
    page.goto(f"{explored.url}/explorer")
    page.wait_for_selector("#lookup-form", state="visible")
    page.click("#key-forget")
    page.wait_for_selector("#key-form", state="visible")
    assert page.evaluate("sessionStorage.length") == 0
    assert page.is_hidden("#lookup-form")
    assert watched.errors == []


def test_a_key_that_is_not_an_admin_key_is_refused_with_a_reason(
    explored: Explored, watched: Watched
) -> None:
    page = watched.page
    page.goto(f"{explored.url}/explorer")
    enter_key(page, explored.reader_key)
    page.wait_for_selector("#message:has-text('not an admin key')")
    assert page.is_hidden("#lookup-form")
    assert page.evaluate("sessionStorage.length") == 0

    enter_key(page, "tf_000000000000_wrong")
    page.wait_for_selector("#message:has-text('The key was refused')")
    assert page.is_visible("#key-form")
    assert page.evaluate("sessionStorage.length") == 0
    # the refusals are the API's 401 and 403, which the browser logs as failed loads
    assert all("401" in error or "403" in error for error in watched.errors), watched.errors


def test_a_backfill_s_progress_is_shown(explored: Explored, watched: Watched) -> None:
    """A rule's backfill progress, which the computed-attributes catalog holds while it
    backfills: the real answer, with progress added on the way to the page (nothing
    here backfills)."""

    def backfilling(route: Route) -> None:
        answer = route.fetch()
        body = answer.json()
        for rule in body["rules"]:
            if rule["name"] == "orders":
                rule |= {"status": "PROCESSING", "backfill": {"done": 120, "total": 500}}
        route.fulfill(response=answer, json=body)

    page = watched.page
    page.route("**/explorer/api/rules", backfilling)
    page.goto(f"{explored.url}/explorer/rules")
    enter_key(page, explored.admin_key)
    page.wait_for_selector("#rules-section", state="visible")
    assert cells(page, "rules", "orders")[6:] == ["PROCESSING", "24% (120 of 500)"]
    assert watched.errors == []
