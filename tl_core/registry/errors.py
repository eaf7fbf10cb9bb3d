"""The registry's exceptions: every refusal is a :class:`RegistryError` (a ``TLError``) naming what was wrong."""

from __future__ import annotations

from tl_core.errors import TLError


class RegistryError(TLError):
    """A registry operation was refused; the message says why."""


class ConflictError(RegistryError):
    """Another promotion or rollback moved the champion first."""


class IntegrityError(RegistryError):
    """A version's files do not match its manifest, or do not load."""


class MetadataError(RegistryError):
    """Registry metadata (a manifest, the champion pointer, a ledger record) is unreadable or malformed."""


class UnexplainedPointer(RegistryError):
    """The champion pointer holds a change that the ledger and the intents cannot explain (e.g. a hand edit)."""
