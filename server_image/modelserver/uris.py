"""Model URIs without their secrets, for logs, errors, termination messages and status.

One set of rules, used by the fetcher and importable by the operator (standard library only, and
`modelserver` is installed in the operator's image too), so a URI reads the same everywhere:

1. userinfo (`user:password@`) becomes `***@`: whether credentials were given shows, not whose.
2. every query parameter keeps its name and loses its value (`X-Amz-Signature=***`); a parameter
   whose name is not a plain name (letters, digits, `-_.~`, at most 64 characters) or that has no
   `=` becomes `***` whole. Pre-signed URLs (S3, GCS, Azure SAS) carry their secrets there.
3. the fragment is dropped (it is never sent, and nothing in it is needed to find the model).
4. scheme, host, port and path stay as they are.
5. a string that does not parse as a URI becomes `<unparsable URI>`, never itself.

`redact_text` applies the same rules to every `scheme://...` inside a longer message (an error
from a library that quotes the URL it was given).
"""

from __future__ import annotations

import re
import urllib.parse

HIDDEN = "***"
UNPARSABLE = "<unparsable URI>"

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.~-]{1,64}")
# A URI in prose: up to white space or a quote, without the punctuation that ends a sentence.
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]*[^\s'\"<>`.,;:)\]]")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def redact(uri: str) -> str:
    """`uri` by the rules of this module: no userinfo, no query values, no fragment."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return UNPARSABLE
    _, at, host = parts.netloc.rpartition("@")
    netloc = f"{HIDDEN}@{host}" if at else host
    query = "&".join(_redact_parameter(item) for item in parts.query.split("&") if item)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_text(text: str) -> str:
    """`text` with every `scheme://...` in it redacted."""
    return _URI_IN_TEXT.sub(lambda match: redact(match.group(0)), text)


def same_origin(first: str, second: str) -> bool:
    """Whether two http(s) URIs have the same scheme, host and port (credentials may follow)."""
    try:
        a, b = urllib.parse.urlsplit(first), urllib.parse.urlsplit(second)
        return (a.scheme.lower(), a.hostname, _port(a)) == (b.scheme.lower(), b.hostname, _port(b))
    except ValueError:
        return False


def _port(parts: urllib.parse.SplitResult) -> int | None:
    return parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())


def _redact_parameter(item: str) -> str:
    name, equals, _ = item.partition("=")
    if equals and _PLAIN_NAME.fullmatch(name):
        return f"{name}={HIDDEN}"
    return HIDDEN
