"""The project's small exception hierarchy; the CLI turns each into one line and exit code 2."""

from __future__ import annotations


class CryoframeError(Exception):
    """Base class of every error cryoframe raises on purpose."""


class FormatError(CryoframeError):
    """An input file is not what its format promises (truncated, garbled, missing columns...)."""


class SchemaError(CryoframeError):
    """A field is missing, has the wrong dtype, or cannot be converted."""


class InputError(CryoframeError, ValueError):
    """Arguments or data that cannot be processed (duplicate uids, unmatched passthrough...).

    Also a :class:`ValueError`, so callers that catch bad values the standard way catch it too.
    """


class StoreError(CryoframeError):
    """A ParticleStore is missing, incomplete, or would be overwritten."""
