"""OpenAI's image API (`POST /v1/images/generations`) over httpx.

Images come back base64-encoded (`b64_json`: gpt-image-1 always, DALL·E 3 when asked). Errors carry OpenAI's
envelope (`{"error": {"message", "type", "code"}}`): a refused prompt (`content_policy_violation`, or any other
400) fails the job with OpenAI's message; 429 and 5xx are transient, after `Retry-After` when given.
"""

from __future__ import annotations

import base64
import binascii
import struct

import httpx

from chat.providers.http import retry_after

from .base import Artifact, StudioError, StudioProvider, StudioRequest, StudioResult


def png_size(data: bytes) -> tuple[int | None, int | None]:
    """A PNG's width and height from its header (None for anything else)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None, None


def error_from(response: httpx.Response) -> StudioError:
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    message = str(error.get("message") or f"OpenAI answered {response.status_code}.")[:400]
    code = str(error.get("code") or error.get("type") or "")
    transient = response.status_code == 429 or response.status_code >= 500
    return StudioError(message, transient=transient, retry_after=retry_after(response.headers), code=code)


class OpenAIStudio(StudioProvider):
    def run(self, request: StudioRequest) -> StudioResult:
        if request.kind != "image":
            raise StudioError(f"OpenAI does not run {request.kind} jobs here.", transient=False)
        options = request.options
        body = {"model": request.model, "prompt": request.prompt, "n": options.get("n", 1),
                "size": options["size"], "quality": options["quality"]}
        if request.model.startswith("dall-e"):
            body["response_format"] = "b64_json"
        try:
            response = httpx.post(f"{request.base_url.rstrip('/')}/images/generations", json=body,
                                  headers={"Authorization": f"Bearer {request.api_key}"},
                                  timeout=httpx.Timeout(self.timeout, connect=10))
        except httpx.TimeoutException:
            raise StudioError("OpenAI did not answer in time.", transient=True) from None
        except httpx.TransportError as error:
            raise StudioError(f"OpenAI could not be reached ({error.__class__.__name__}).", transient=True) from None
        if response.status_code != 200:
            raise error_from(response)
        try:
            images = [base64.b64decode(item["b64_json"], validate=True) for item in response.json()["data"]]
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise StudioError("OpenAI sent an answer without images.", transient=True) from None
        if not images:
            raise StudioError("OpenAI sent an answer without images.", transient=True)
        artifacts = [Artifact(content=data, content_type="image/png", extension="png", width=png_size(data)[0],
                              height=png_size(data)[1]) for data in images]
        return StudioResult(artifacts=artifacts, units=len(artifacts))
