"""The names of segformer's own bookkeeping in an output folder: lock, manifest, journal, staging."""

from __future__ import annotations

from .atomic import _TEMP_NAME

LOCK_NAME = ".segformer-lock"

MANIFEST_NAME = ".segformer-manifest.json"
JOURNAL_NAME = ".segformer-manifest.jsonl"
MANIFEST_FORMAT = "segformer-manifest"
_RESERVED = (MANIFEST_NAME, JOURNAL_NAME, LOCK_NAME)

STAGING_PREFIX = ".segformer-staging."


def _scratch(name: str) -> bool:
    """Names of our own bookkeeping in an output folder: manifest, journal, locks, temporaries."""
    return (
        name in _RESERVED
        or name.endswith(LOCK_NAME)
        or name.startswith(STAGING_PREFIX)
        or _TEMP_NAME.match(name) is not None
    )
