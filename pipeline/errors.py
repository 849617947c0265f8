"""The project's exception tree. Library errors are translated into it at one
boundary per service (``llm.py``, ``huixiangdou.py``), with ``raise ... from``.

    PipelineError
    ├── SettingsError         bad settings file or value (exit 2)
    ├── InputError            bad corpus path, unreadable input (exit 2)
    │   └── UndecodableFile   a corpus file is binary or cannot be decoded
    ├── LockedError           another run holds the output folder
    ├── LedgerError           a ledger could not be opened, written or synced
    ├── OutputError           an output file could not be written
    ├── StreamFormatError     a HuixiangDou stream is not concatenated JSON documents
    ├── Stopped               the run is stopping: a call was not made (no item failed)
    └── ServiceError          a call to the LLM API or a RAG server failed
        ├── RetryableError    try again, after ``retry_after`` seconds when given
        ├── QuotaExhausted    balance or daily quota gone: never retried in a loop
        ├── FatalServiceError bad key, unknown model, bad request: a person must fix it
        ├── ServersDown       every RAG server is down or resting
        └── UnusableReply     the LLM answered this one prompt with nothing usable (empty,
            │                 all reasoning, cut off): a lost item, not a broken run
            └── ContentRefused the provider's content filter refused this one prompt
"""

from __future__ import annotations

__all__ = [
    "ContentRefused",
    "FatalServiceError",
    "InputError",
    "LedgerError",
    "LockedError",
    "OutputError",
    "PipelineError",
    "QuotaExhausted",
    "RetryableError",
    "ServersDown",
    "ServiceError",
    "SettingsError",
    "Stopped",
    "StreamFormatError",
    "UndecodableFile",
    "UnusableReply",
]


class PipelineError(Exception):
    """Base of every error this project raises on purpose."""


class SettingsError(PipelineError):
    """A settings file or value is wrong; the message names file and key."""


class InputError(PipelineError):
    """An input path is missing or unusable; the message names it."""


class LockedError(PipelineError):
    """Another run holds the output folder's lock."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class Stopped(PipelineError):
    """The run is stopping (quota, signal, fatal error), so a call was not
    made or not finished. Not a failure of the item it was for: the next run
    goes on with that item."""


class UndecodableFile(InputError):
    """A file is binary or cannot be decoded; the message names it and why.
    ``path``: a str or path-like object."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class LedgerError(PipelineError):
    """A ledger could not be opened, written or synced; the message names the file.

    Rows in flight when it happened are not reported as recorded."""


class OutputError(PipelineError):
    """An output file could not be written (disk full, permissions); the message
    names it and says what is safe."""


class StreamFormatError(PipelineError, ValueError):
    """A HuixiangDou stream is not concatenated JSON documents (or ends inside one)."""


class ServiceError(PipelineError):
    """A call to an external service failed."""

    def __init__(self, message: str, *, service: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.service = service
        self.status = status


class RetryableError(ServiceError):
    """Worth trying again: rate limit, overload, 5xx, dropped connection, timeout."""

    def __init__(
        self,
        message: str,
        *,
        service: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, service=service, status=status)
        self.retry_after = retry_after


class QuotaExhausted(ServiceError):
    """Out of money or daily quota: retrying burns the night, so stop cleanly."""


class FatalServiceError(ServiceError):
    """A person must change something (key, model name, parameters) first."""


class ServersDown(ServiceError):
    """No RAG server can take a request; the message names the URLs and says
    what to check. ``retry_in``: seconds until one may be tried again; None
    when waiting is no use (none answered for ``down_timeout_s``, or none was
    up at the start)."""

    def __init__(self, message: str, *, service: str = "", retry_in: float | None = None) -> None:
        super().__init__(message, service=service)
        self.retry_in = retry_in


class UnusableReply(ServiceError):
    """The LLM answered one prompt with nothing usable. ``kind`` is one of
    :data:`pipeline.services.replies.UNUSABLE_KINDS`; the item is lost, the
    run goes on."""

    def __init__(self, message: str, *, kind: str, service: str = "", status: int | None = None) -> None:
        super().__init__(message, service=service, status=status)
        self.kind = kind


class ContentRefused(UnusableReply):
    """The provider's content filter refused one prompt (or withheld its reply);
    ``provider_message`` is the provider's own words, key redacted."""

    def __init__(self, message: str, *, provider_message: str, service: str = "",
                 status: int | None = None) -> None:
        super().__init__(message, kind="refused", service=service, status=status)
        self.provider_message = provider_message
