"""Errors every layer raises; each carries a one-line message meant for the user."""


class PrognosError(Exception):
    """Base class: a problem the user can act on, with a clear one-line message."""


class SetupMissingError(PrognosError):
    """Something `make setup` provides is missing (jars, virtualenv, data)."""


class BrokerUnavailableError(PrognosError):
    """The Kafka broker could not be reached."""


class UnknownTableError(PrognosError):
    """A table name is not in the catalog."""


class SchemaMismatchError(PrognosError):
    """A write's schema differs from the catalog's schema for the table."""


class DataFileError(PrognosError):
    """A vendored data file is missing or damaged."""


class EventValidationError(PrognosError):
    """An event does not satisfy the event schema."""


class LakeBusyError(PrognosError):
    """Another job held the lake's lock for longer than the wait allowed."""


class AliasConflictError(PrognosError):
    """A model's aliases changed since the caller read them (an expected_version mismatch)."""
