"""Azure OpenAI on the openai SDK's ``AsyncAzureOpenAI``: deployments, api-version, batches.

At Azure the ``model`` of a request is a deployment name, and the SDK puts it in the path
(``/openai/deployments/{deployment}/chat/completions?api-version=...``). The endpoint, key
and API version come from ``AZURE_OPENAI_ENDPOINT``, ``AZURE_OPENAI_API_KEY`` and
``OPENAI_API_VERSION``. Global batch deployments take the batch endpoint ``/chat/completions``
(in the create call and in each input line's ``url``) and the window ``24h``; a file holds at
most 100,000 requests and 200 MB. Everything else is the OpenAI shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import openai
from openai import AsyncAzureOpenAI

from rowprompt.errors import ConfigError, Permanent
from rowprompt.providers.base import BatchCaps, BatchInfo, CompletionResult
from rowprompt.providers.openai import (
    OpenAIProvider,
    batch_info,
    translate_error,
)

# The GA data-plane version that has the Batch API (Azure's "2024-10-21").
DEFAULT_API_VERSION: Final = "2024-10-21"
AZURE_BATCH_ENDPOINT: Final = "/chat/completions"


def _deployment_error(deployment: str, endpoint: str | None) -> ConfigError:
    return ConfigError(
        f"Azure has no deployment named {deployment!r} at {endpoint or 'the endpoint'}",
        hint="pass --model azure:<your deployment name> (the name in Azure AI Foundry, "
        "not the model's)",
    )


class AzureOpenAIProvider(OpenAIProvider):
    """The OpenAI shape over ``AsyncAzureOpenAI``; ``model`` names a deployment."""

    batch_caps = BatchCaps(max_requests=100_000, max_bytes=200 * 1000 * 1000)

    def __init__(
        self,
        *,
        api_key: str,
        azure_endpoint: str,
        api_version: str = DEFAULT_API_VERSION,
        timeout: float = 120.0,
        endpoint: str = "chat",
    ) -> None:
        # The lean hot path knows nothing of deployment paths and api-version: SDK only.
        super().__init__(
            api_key=api_key,
            base_url=azure_endpoint,
            name="azure",
            timeout=timeout,
            lean=False,
            endpoint=endpoint,
        )
        self.azure_endpoint = azure_endpoint
        self.api_version = api_version
        # OpenAIProvider builds a plain AsyncOpenAI; Azure needs its own client (paths,
        # api-version, the api-key header). It has made no connection yet: swap it.
        self._client = AsyncAzureOpenAI(
            api_key=api_key,
            azure_endpoint=azure_endpoint,
            api_version=api_version,
            max_retries=0,
            timeout=timeout,
        )

    async def complete(self, body: Mapping[str, Any], *, timeout: float) -> CompletionResult:
        """One chat completion on the deployment named by ``body["model"]``."""
        try:
            return await super().complete(body, timeout=timeout)
        except Permanent as error:
            if error.code == "DeploymentNotFound":
                raise _deployment_error(str(body.get("model")), self.azure_endpoint) from None
            raise
        except ConfigError as error:
            if "credentials" in error.message:
                hint = "check AZURE_OPENAI_API_KEY (the key of this Azure resource)"
                raise ConfigError(error.message, hint=hint) from None
            raise

    async def check_model(self, model: str) -> None:
        """Nothing to check cheaply: Azure lists models, not deployments. The first request
        tells a missing deployment (a one-line :class:`ConfigError`)."""
        return

    def batch_line(self, custom_id: str, body: Mapping[str, Any]) -> bytes:
        """One line of a batch file, with Azure's ``url`` (``/chat/completions``)."""
        line = {"custom_id": custom_id, "method": "POST", "url": AZURE_BATCH_ENDPOINT, "body": body}
        return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()

    async def create_batch(self, input_file_id: str, metadata: Mapping[str, str]) -> BatchInfo:
        """Create a 24h batch on Azure's batch endpoint."""
        try:
            batch = await self._client.batches.create(
                input_file_id=input_file_id,
                endpoint=AZURE_BATCH_ENDPOINT,  # type: ignore[arg-type]
                completion_window="24h",
                metadata=dict(metadata),
            )
        except openai.APIError as exc:
            raise translate_error(exc) from None
        return batch_info(batch.model_dump())
