"""The personalization file (`TRAITFLOW_PERSONALIZATION_FILE`): Treasure Data
personalization services, their tokens and offers, checked whole at load.

    services:
      - name: web
        account_id: "1234"
        database: p13n_db
        table: customer_info_table
        tokens:
          - instance_id: site-1
            sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        offers:
          - name: offer_for_high_loyalty
            condition: attributes.lifetime_value >= 100.0
            attributes: {status: "'high'", plan: traits.plan}
            batch_segments: ["1588214"]

A token is written as the SHA-256 (hex) of its secret part (`printf %s "$SECRET" |
sha256sum`), never the secret; the admin API makes tokens and shows a secret once.
Every problem is reported with file, line, service and what is wrong, and the API
does not start with a broken file: a personalization that silently answers no
offers is worse than one that is refused.
The format of a service is `attributes.offers.ServiceSpec`. The API loads the file
without the rule file; `traitflow validate` loads both, and reports an offer that names
an attribute or audience the rules do not declare (`attributes.offer_names`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydantic
import yaml

from attributes.offer_names import undeclared
from attributes.offers import InvalidService, Service, ServiceSpec, compile_service
from attributes.rules import RuleFileError, RuleProblem
from attributes.ruleset import RuleSet


def _problem(file: str, line: int | None, service: str | None, problem: str) -> RuleProblem:
    """A problem of the file, in the service named `service` (None: of the file)."""
    return RuleProblem(file, line, service, problem, "service")


class PersonalizationFileError(RuleFileError):
    """A personalization file that cannot be used; `problems` lists every problem, each
    a `RuleProblem` whose `name` is the service (`kind` "service"). A `RuleFileError`,
    so that a command checking both files reports both alike."""


def _lines(node: yaml.Node, key: str) -> list[int]:
    """The line of each item of the list under `key` of a mapping node."""
    if not isinstance(node, yaml.MappingNode):
        return []
    values = [value for name, value in node.value if name.value == key]
    if not values or not isinstance(values[-1], yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in values[-1].value]


def _pydantic_problem(error: Any) -> str:
    location = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{location}: {message}" if location else message


def _error_line(error: Any, line: int, offer_lines: list[int]) -> int:
    loc = error["loc"]
    if (
        len(loc) >= 2
        and loc[0] == "offers"
        and isinstance(loc[1], int)
        and loc[1] < len(offer_lines)
    ):
        return offer_lines[loc[1]]
    return line


def _offer_line(index: int | None, line: int, offer_lines: list[int]) -> int:
    """The line of the service's offer `index` (None: the service's own line)."""
    return offer_lines[index] if index is not None and index < len(offer_lines) else line


def parse_personalization(
    text: str,
    file: str,
    entities: Sequence[str],
    topics: Sequence[str],
    rules: RuleSet | None = None,
) -> dict[str, Service]:
    """The services of a personalization file's text, by name; raises
    PersonalizationFileError listing every problem. With `rules` (`traitflow
    validate`; the API loads no rules), an attribute or audience an offer names that
    they do not declare for its service's entity is a problem too."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise PersonalizationFileError(
            [_problem(file, line, None, f"not valid YAML: {exc}")]
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("services"), list):
        raise PersonalizationFileError(
            [_problem(file, 1, None, "expected a mapping with a 'services' list")]
        )
    assert root is not None
    service_nodes = [v for k, v in root.value if k.value == "services"][-1].value
    problems: list[RuleProblem] = []
    services: dict[str, Service] = {}
    first: dict[str, int] = {}
    token_owner: dict[str, str] = {}
    for raw, node in zip(data["services"], service_nodes, strict=True):
        line = node.start_mark.line + 1
        offer_lines = _lines(node, "offers")
        name = raw.get("name") if isinstance(raw, dict) else None
        label = name if isinstance(name, str) else None
        try:
            spec = ServiceSpec.model_validate(raw)
        except pydantic.ValidationError as exc:
            problems.extend(
                _problem(file, _error_line(e, line, offer_lines), label, _pydantic_problem(e))
                for e in exc.errors()
            )
            continue
        if spec.name in first:
            problems.append(
                _problem(
                    file, line, spec.name, f"duplicate name (first on line {first[spec.name]})"
                )
            )
            continue
        first[spec.name] = line
        try:
            service = compile_service(spec, entities, topics)
        except InvalidService as exc:
            problems.extend(
                _problem(file, _offer_line(index, line, offer_lines), spec.name, message)
                for index, message in exc.problems
            )
            continue
        if rules is not None:
            problems.extend(
                _problem(file, _offer_line(index, line, offer_lines), spec.name, message)
                for index, message in undeclared(spec, rules)
            )
        for digest, instance in service.tokens.items():
            if (owner := token_owner.get(digest)) is not None:
                problems.append(
                    _problem(file, line, spec.name, f"token of {instance!r} is also {owner!r}'s")
                )
            token_owner[digest] = spec.name
        services[spec.name] = service
    if problems:
        raise PersonalizationFileError(problems)
    return services


def load_personalization(
    path: str | Path,
    entities: Sequence[str],
    topics: Sequence[str],
    rules: RuleSet | None = None,
) -> dict[str, Service]:
    """The services of the file at `path` (`rules`: as `parse_personalization`); a file
    that cannot be read is a problem of it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PersonalizationFileError([_problem(str(path), None, None, str(exc))]) from None
    return parse_personalization(text, str(path), entities, topics, rules)
