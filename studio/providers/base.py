from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StudioRequest:
    kind: str
    model: str  # the provider's own model name
    prompt: str
    options: dict
    api_key: str
    base_url: str


@dataclass(frozen=True)
class Artifact:
    """One file a job made."""

    content: bytes
    content_type: str
    extension: str
    width: int | None = None
    height: int | None = None
    duration_seconds: float | None = None
    text: str = ""


@dataclass(frozen=True)
class StudioResult:
    artifacts: list[Artifact]
    units: int  # what the provider made, as the price counts it (images, characters, seconds)
    metadata: dict = field(default_factory=dict)


class StudioError(Exception):
    """A provider's failure. `transient` ones (timeouts, 5xx, 429) are retried with backoff, after `retry_after`
    seconds at least when the provider said; the others (content policy, invalid input, a bad key) fail the job at
    once with `message`, the provider's reason."""

    def __init__(self, message: str, *, transient: bool, retry_after: float | None = None, code: str = ""):
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.retry_after = retry_after
        self.code = code


class StudioProvider:
    timeout = 120.0

    def run(self, request: StudioRequest) -> StudioResult:
        raise NotImplementedError
