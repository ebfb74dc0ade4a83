"""Where `Settings` read variables from: the environment an entry point hands to
`Settings.from_environ`, never the process's own (`os.environ`).

pydantic-settings reads `os.environ` whenever a `BaseSettings` is made; here its
environment source is pointed at a given mapping instead (the same parsing, JSON for
structured values, and the same errors), and only while `from_environ` builds."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource
from pydantic_settings.sources.utils import parse_env_vars

#: the environment settings are being built from (None: none, only the values given)
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("traitflow_environ", default=None)


@contextmanager
def reading(environ: Mapping[str, str]) -> Iterator[None]:
    """Settings made inside this block read `environ`."""
    token = _ENVIRON.set(environ)
    try:
        yield
    finally:
        _ENVIRON.reset(token)


def sources(
    settings_cls: type[BaseSettings], given: PydanticBaseSettingsSource
) -> tuple[PydanticBaseSettingsSource, ...]:
    """The values given, then the environment being read, if any."""
    environ = _ENVIRON.get()
    if environ is None:
        return (given,)
    return given, MappingEnvSource(settings_cls, environ)


class MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over `environ`, not `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # before the base class loads the variables
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )
