"""Checks on the strings a request carries (keys, labels, metadata, collections, versions).

Each string ends up in a catalogue query, a file name or a log line, so a key with a NUL byte
(refused by PostgreSQL, and cut short by C APIs), a newline (forged log lines) or a quote in a
metadata name (SQLite's JSON paths cannot escape it) is refused here with INVALID_ARGUMENT,
before it reaches the database and answers INTERNAL there.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping

from service.errors import InvalidInput

# the catalogue's column sizes: images.key and images.label are VARCHAR(512)
MAX_KEY_CHARS = 512
MAX_LABEL_CHARS = 512
MAX_META_NAME_CHARS = 256
MAX_META_VALUE_CHARS = 4096
MAX_VERSION_CHARS = 255
# the catalogue's collections.name is VARCHAR(128)
MAX_COLLECTION_CHARS = 128
# the line breaks and tab a metadata value (a caption, say) may hold; no other control character
_VALUE_WHITESPACE = frozenset("\t\n\r")
# Unicode line and paragraph separators split log lines like a newline does
_SEPARATORS = frozenset("\u2028\u2029")


def _bad_char(text: str, allowed: frozenset[str] = frozenset()) -> tuple[int, str] | None:
    for i, ch in enumerate(text):
        if ch in allowed:
            continue
        if ch in _SEPARATORS or unicodedata.category(ch) == "Cc":  # C0, DEL and C1 controls
            return i, ch
    return None


def check_text(value: str, what: str, *, max_chars: int, allow_empty: bool = False,
               allowed: frozenset[str] = frozenset()) -> str:
    """``value`` if it is 1 (0 with ``allow_empty``) to ``max_chars`` characters of text with no
    control character (other than those in ``allowed``); else :class:`InvalidInput` saying why."""
    if not value and not allow_empty:
        raise InvalidInput(f"{what} must be 1 to {max_chars} characters, got an empty one")
    if len(value) > max_chars:
        raise InvalidInput(f"{what} must be at most {max_chars} characters, got {len(value)}")
    bad = _bad_char(value, allowed)
    if bad is not None:
        i, ch = bad
        raise InvalidInput(f"{what} contains the control character U+{ord(ch):04X} at position "
                           f"{i}; it must be printable text")
    return value


def check_key(key: str, what: str = "key") -> str:
    return check_text(key, what, max_chars=MAX_KEY_CHARS)


def check_keys(keys: Iterable[str], what: str = "key") -> None:
    for i, k in enumerate(keys):
        check_key(k, f"{what} {i} ({k[:40]!r})" if k else f"{what} {i}")


def check_label(label: str, what: str = "label") -> str:
    return check_text(label, what, max_chars=MAX_LABEL_CHARS, allow_empty=True)


def check_metadata(metadata: Mapping[str, str], what: str = "metadata") -> None:
    """Names: 1 to 256 characters, no control character and no double quote (a JSON path
    in SQLite's queries cannot escape one); values: at most 4096 characters, no control
    character but tab and line breaks."""
    for name, value in metadata.items():
        check_text(name, f"{what} name {name[:40]!r}", max_chars=MAX_META_NAME_CHARS)
        if '"' in name:
            raise InvalidInput(f"{what} name {name[:40]!r} contains a double quote, which "
                               "metadata names may not hold")
        check_text(value, f"{what} value of {name[:40]!r}", max_chars=MAX_META_VALUE_CHARS,
                   allow_empty=True, allowed=_VALUE_WHITESPACE)


def check_count(n: int, limit: int, what: str, where: str = "") -> None:
    if n > limit:
        raise InvalidInput(f"{where + ': ' if where else ''}{n} {what}; the limit is {limit}")


def check_collection(name: str) -> str:
    """A collection name ("" is the default collection): bounded text, so that the errors and
    log lines that quote it stay short (a 1 MB name once made a NOT_FOUND too large to send)."""
    return check_text(name, "collection", max_chars=MAX_COLLECTION_CHARS, allow_empty=True)


def check_version_name(version: str) -> str:
    """An index version is a folder name under ``<root>/versions``, never a path."""
    check_text(version, "index version", max_chars=MAX_VERSION_CHARS)
    if "/" in version or "\\" in version or version in (".", ".."):
        raise InvalidInput(f"index version {version!r} is not a version name (a folder under "
                           "the index root's versions/)")
    return version
