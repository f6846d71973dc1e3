"""The one exception tree of rowprompt.

Every error a user can cause or meet is a :class:`RowpromptError`; the CLI turns any of them
into one line (the cause, then the fix) and a non-zero exit code, never a traceback::

    RowpromptError
    ├── UsageError                 the user asked for something that cannot work (exit 2)
    │   ├── InputError             unreadable, empty or malformed input table; duplicate ids
    │   ├── TemplateError          a template that does not parse or names a missing column
    │   ├── ConfigError            a missing API key, an unknown provider or model, a bad option
    │   └── OutputError            an output path that cannot or must not be written
    ├── JobError                   a job that does not exist, or is driven by another process
    │   ├── JobNotFound
    │   └── JobBusy
    └── ProviderError              what the provider answered, translated from its SDK
        ├── RateLimited            429: wait ``retry_after`` seconds, then try again
        ├── Transient              5xx, timeouts, dropped connections: try again
        ├── Permanent              the request itself is wrong: do not retry
        ├── QuotaExhausted         the account cannot pay: stop the job
        └── BatchUnsupported       the server has no Batch API
"""

from __future__ import annotations


class RowpromptError(Exception):
    """Base of every rowprompt error.

    ``hint`` says how to fix it; the CLI prints it after the cause on the same line.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The cause and the fix as one line, as the CLI prints them."""
        text = " ".join(self.message.split())
        if self.hint:
            text = f"{text.rstrip('.')}. {' '.join(self.hint.split())}"
        return text


class UsageError(RowpromptError):
    """The user asked for something that cannot work; nothing was sent."""

    exit_code = 2


class InputError(UsageError):
    """The input table cannot be read or is not usable as it is."""


class TemplateError(UsageError):
    """The prompt template does not parse or names a column the table lacks."""


class ConfigError(UsageError):
    """A missing key, an unknown provider or model, or an option that cannot be honoured."""


class OutputError(UsageError):
    """The output path cannot or must not be written."""


class JobError(RowpromptError):
    """A problem with a job in the ledger."""


class JobNotFound(JobError):
    """No job with that id (or prefix) is in the ledger."""

    exit_code = 2


class JobBusy(JobError):
    """Another live process drives this job."""

    exit_code = 3


class ProviderError(RowpromptError):
    """An error answered by the provider, translated from its SDK.

    ``status`` is the HTTP status where there was one, ``code`` the provider's error code.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code


class RateLimited(ProviderError):
    """429: the rate limit is reached; ``retry_after`` seconds is the provider's advice."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        hint: str | None = None,
        status: int | None = 429,
        code: str | None = "rate_limit_exceeded",
    ) -> None:
        super().__init__(message, hint=hint, status=status, code=code)
        self.retry_after = retry_after


class Transient(ProviderError):
    """A failure that may pass: 5xx, a timeout, a dropped connection."""


class Permanent(ProviderError):
    """The request is wrong as it stands; retrying it gives the same answer."""


class QuotaExhausted(ProviderError):
    """The account is out of credit or quota: no request will pass until the user acts."""


class BatchUnsupported(ProviderError):
    """The server does not implement the Batch API."""
