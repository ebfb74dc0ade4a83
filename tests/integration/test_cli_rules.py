"""`traitflow rules` as a real process against a real Redis, beside a real `traitflow
api` over the same keys: what one makes the other reads, in the same shape, and a
refusal is exit 2 with the problem."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import ROOT, create_key
from tests.integration.workers import running_api
from traitflow.config import Settings

pytestmark = pytest.mark.integration

RULES = """\
attributes:
  - name: purchase_count
    function: count
    event: Order Completed
"""
PATH = "/data/core/ca/attributes"


def rules(settings: Settings, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "traitflow", "rules", *arguments],
        env=settings.child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_and_the_api_change_the_same_attributes(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    # no backfill: ACTIVE at once (no worker runs here to backfill)
    own = settings.isolated(f"tfcr-{uuid.uuid4().hex[:8]}", rules_path=path, backfill=False)
    body = tmp_path / "orders.yaml"
    body.write_text("name: orders_7d\nfunction: count\nlookback: {count: 7, unit: days}\n")

    made = rules(own, "create", str(body))
    assert made.returncode == 0, made.stderr
    attribute = json.loads(made.stdout)
    assert (attribute["status"], attribute["rulesVersion"]) == ("DRAFT", 1)

    with running_api(own, "api") as url:
        token = create_key(own, "cli-rules", admin=True)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, timeout=10.0, headers=headers) as api:
            assert api.get(f"{PATH}/{attribute['id']}").json() == attribute
            changed = api.patch(f"{PATH}/{attribute['id']}", json={"status": "ACTIVE"})
            assert changed.status_code == 200, changed.text

            shown = rules(own, "show", attribute["id"])
            assert shown.returncode == 0, shown.stderr
            assert json.loads(shown.stdout) == changed.json()

            listed = rules(own, "list")
            assert listed.returncode == 0, listed.stderr
            assert [line.split() for line in listed.stdout.splitlines()[2:]] == [
                ["file:purchase_count", "purchase_count", "user", "ACTIVE", "file"],
                [attribute["id"], "orders_7d", "user", "ACTIVE", "api"],
            ]
            status = rules(own, "status")
            assert status.returncode == 0, status.stderr
            assert status.stdout.splitlines()[0] == "rules version 2"

            refused = rules(own, "update", attribute["id"], "--json", '{"status": "PROCESSING"}')
            assert refused.returncode == 2
            assert "status: must be one of" in refused.stderr

            deleted = rules(own, "delete", attribute["id"])
            assert deleted.returncode == 0, deleted.stderr
            assert api.get(f"{PATH}/{attribute['id']}").status_code == 404
            assert api.get(PATH).json()["rulesVersion"] == 3

    gone = rules(own, "delete", attribute["id"])
    assert gone.returncode == 2
    assert f"computed attribute {attribute['id']!r} not found" in gone.stderr
