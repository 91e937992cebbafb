"""How one ``datadog.yaml`` or ``DD_*`` value is read and shown, the Datadog Agent's way.

Each parser takes what YAML or the environment gives (environment values are always
strings) and returns the typed value, or raises ``ValueError`` whose text is the *reason*
only: the loader adds the file and key. Parsers of secrets never put the value in a reason,
and ``scrub_*`` mask secrets for display. The ``Annotated`` aliases at the bottom plug the
parsers into the pydantic model.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

from pydantic import BeforeValidator, SecretStr

from workers.settings import EventTypeSelector

__all__ = [
    "EVENT_SELECTOR_FIELDS",
    "DatadogBool",
    "DnsLabel",
    "DnsSubdomain",
    "EventTypeSelectors",
    "FieldSelectorTerms",
    "Hostname",
    "HttpURL",
    "NonNegativeInt",
    "Port",
    "PositiveInt",
    "ProxyURL",
    "Seconds",
    "SecretText",
    "Site",
    "StrList",
    "Text",
    "choice",
    "looks_like_api_key",
    "parse_bool",
    "scrub_api_key",
    "scrub_url",
    "shown",
]

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})

# Field labels the API server accepts in an Event fieldSelector (k8s.io/kubernetes
# pkg/apis/core/v1 conversion); anything else is a 400 at every watch, so refuse it here.
EVENT_SELECTOR_FIELDS = (
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
    "metadata.name",
    "metadata.namespace",
)
_SELECTOR_TERM = re.compile(r"(?P<field>[A-Za-z.]+)(?P<op>!=|==|=)(?P<value>[^,\s]*)")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_HOST_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(\.{_HOST_LABEL})*")
_SITE = re.compile(rf"{_HOST_LABEL}(\.{_HOST_LABEL})+")


def shown(value: object) -> str:
    """A short, unambiguous rendering of a *non-secret* bad value for an error message."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        stripped = value.strip()
        try:
            numeric = math.isfinite(float(stripped))
        except ValueError:
            numeric = False
        return stripped if numeric else repr(value if len(value) <= 60 else value[:57] + "...")
    if value is None:
        return "nothing"
    return f"a {type(value).__name__}"


def parse_bool(value: object) -> bool:
    """true/false, yes/no, on/off, 1/0 in any case, as the Datadog Agent reads them."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(f"expected a boolean (true/false, yes/no, on/off, 1/0), got {shown(value)}")


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        return int(value)
    return None


def _as_number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def positive_int(value: object) -> int:
    number = _as_int(value)
    if number is None or number <= 0:
        raise ValueError(f"must be a positive integer, got {shown(value)}")
    return number


def non_negative_int(value: object) -> int:
    number = _as_int(value)
    if number is None or number < 0:
        raise ValueError(f"must be a non-negative integer, got {shown(value)}")
    return number


def positive_seconds(value: object) -> float:
    number = _as_number(value)
    if number is None or number <= 0:
        raise ValueError(f"must be a positive number of seconds, got {shown(value)}")
    return number


def port(value: object) -> int:
    number = _as_int(value)
    if number is None or not 0 <= number <= 65535:
        raise ValueError(f"must be a port from 1 to 65535, or 0 to disable, got {shown(value)}")
    return number


def text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {shown(value)} (quote it in YAML)")
    return value.strip()


def secret_text(value: object) -> SecretStr:
    """A credential: surrounding whitespace (a trailing newline in a Secret) is dropped."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str):
        raise ValueError("must be a string (quote it in YAML); value not shown")
    stripped = value.strip()
    if any(not char.isprintable() or char.isspace() for char in stripped):
        raise ValueError("must not contain spaces or control characters; value not shown")
    return SecretStr(stripped)


def proxy_url(value: object) -> SecretStr:
    """A proxy URL may carry ``user:password@``: it is validated but never echoed."""
    secret = secret_text(value).get_secret_value()
    if secret:
        try:
            parts = urlsplit(secret)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            _ = parts.port  # raises ValueError on a non-numeric port
        except ValueError:
            valid = False
        if not valid:
            raise ValueError("must be a URL like http://host:3128; value not shown")
    return SecretStr(secret)


def str_list(value: object) -> tuple[str, ...]:
    """A YAML list, or a space-separated string as in ``DD_TAGS="env:prod team:a"``."""
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list | tuple):
        items = []
        for index, item in enumerate(value):
            if not isinstance(item, str | int | float) or isinstance(item, bool):
                raise ValueError(f"item {index} must be a string, got {shown(item)}")
            if str(item).strip():
                items.append(str(item).strip())
        return tuple(items)
    if value is None:
        return ()
    raise ValueError(f"must be a list or a space-separated string, got {shown(value)}")


def field_selector_terms(value: object) -> tuple[str, ...]:
    """``filtered_event_types``: terms joined with ``,`` into the watch's fieldSelector."""
    terms = str_list(value)
    for term in terms:
        match = _SELECTOR_TERM.fullmatch(term)
        if match is None:
            raise ValueError(
                f"{term!r} is not a field selector term like reason!=BackOff "
                "(field, = == or !=, value; no spaces or commas)"
            )
        if match["field"] not in EVENT_SELECTOR_FIELDS:
            raise ValueError(
                f"{term!r}: events cannot be selected on {match['field']!r}; "
                f"fields: {', '.join(EVENT_SELECTOR_FIELDS)}"
            )
    return terms


def _selector(index: int, entry: object) -> EventTypeSelector:
    where = f"item {index}"
    if isinstance(entry, EventTypeSelector):
        return entry
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a mapping (kind, source, reasons), got {shown(entry)}")
    unknown = sorted(str(key) for key in entry if key not in ("kind", "source", "reasons"))
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r} (expected kind, source, reasons)")
    fields = {}
    for name in ("kind", "source"):
        raw = entry.get(name) or ""
        if not isinstance(raw, str):
            raise ValueError(f"{where}: {name} must be a string, got {shown(raw)}")
        fields[name] = raw.strip()
    try:
        reasons = str_list(entry.get("reasons"))
    except ValueError as exc:
        raise ValueError(f"{where}: reasons: {exc}") from None
    return EventTypeSelector(kind=fields["kind"], source=fields["source"], reasons=reasons)


def event_type_selectors(value: object) -> tuple[EventTypeSelector, ...]:
    """``collected_event_types``: a YAML list of mappings, or JSON text (from the env)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc.msg} at character {exc.pos}") from None
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ValueError(f"must be a list of mappings (kind, source, reasons), got {shown(value)}")
    return tuple(_selector(index, entry) for index, entry in enumerate(value))


def _matching(pattern: re.Pattern[str], limit: int, what: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        name = text(value)
        if len(name) > limit or not pattern.fullmatch(name):
            raise ValueError(f"must be {what}, got {shown(name)}")
        return name

    return parse


def site(value: object) -> str:
    name = text(value).lower()
    if not _SITE.fullmatch(name):
        raise ValueError(f"must be a Datadog site domain like datadoghq.eu, got {shown(value)}")
    return name


def http_url(value: object) -> str:
    """``dd_url``: not echoed on error, since URLs sometimes carry credentials."""
    url = text(value)
    if url:
        try:
            parts = urlsplit(url)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            _ = parts.port
        except ValueError:
            valid = False
        if not valid:
            raise ValueError("must be an http:// or https:// URL with a host; value not shown")
    return url.rstrip("/")


def choice(*options: str, aliases: dict[str, str] | None = None) -> BeforeValidator:
    """One of ``options`` in any case; ``aliases`` map other spellings onto them."""
    aliases = aliases or {}

    def parse(value: object) -> str:
        word = text(value).lower()
        word = aliases.get(word, word)
        if word not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {shown(value)}")
        return word

    return BeforeValidator(parse)


def looks_like_api_key(api_key: str) -> bool:
    """Datadog API keys are 32 hexadecimal characters."""
    return re.fullmatch(r"[0-9a-fA-F]{32}", api_key) is not None


def scrub_api_key(api_key: str) -> str:
    """The Datadog Agent's form: a 32-hex key keeps its last 5 characters, so an operator
    can tell which key is deployed; any other string is masked whole, since its tail
    could be most of it."""
    if looks_like_api_key(api_key):
        return "*" * 27 + api_key[-5:]
    return "********" if api_key else ""


def scrub_url(url: str) -> str:
    """``http://user:pass@host`` → ``http://user:********@host`` (Datadog's scrubber)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, has_password, _ = userinfo.partition(":")
    masked = f"{user}:********" if has_password else "********"
    return urlunsplit(parts._replace(netloc=f"{masked}@{host}"))


DatadogBool = Annotated[bool, BeforeValidator(parse_bool)]
PositiveInt = Annotated[int, BeforeValidator(positive_int)]
NonNegativeInt = Annotated[int, BeforeValidator(non_negative_int)]
Seconds = Annotated[float, BeforeValidator(positive_seconds)]
Port = Annotated[int, BeforeValidator(port)]
Text = Annotated[str, BeforeValidator(text)]
Hostname = Annotated[
    str, BeforeValidator(_matching(_HOSTNAME, 255, "an RFC 1123 host name"))
]
DnsLabel = Annotated[
    str, BeforeValidator(_matching(_DNS_LABEL, 63, "a DNS-1123 label (a-z, 0-9, '-')"))
]
DnsSubdomain = Annotated[
    str, BeforeValidator(_matching(_DNS_SUBDOMAIN, 253, "a DNS-1123 name (a-z, 0-9, '-', '.')"))
]
Site = Annotated[str, BeforeValidator(site)]
HttpURL = Annotated[str, BeforeValidator(http_url)]
SecretText = Annotated[SecretStr, BeforeValidator(secret_text)]
ProxyURL = Annotated[SecretStr, BeforeValidator(proxy_url)]
StrList = Annotated[tuple[str, ...], BeforeValidator(str_list)]
FieldSelectorTerms = Annotated[tuple[str, ...], BeforeValidator(field_selector_terms)]
EventTypeSelectors = Annotated[
    tuple[EventTypeSelector, ...], BeforeValidator(event_type_selectors)
]
