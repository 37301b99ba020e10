"""The errors DNS providers raise; messages name the provider and never a secret."""

from __future__ import annotations


class ProviderError(Exception):
    """A provider call that failed; the message names the provider and never a secret."""

    def __init__(self, provider: str, message: str, *, retryable: bool = True) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider, self.retryable = provider, retryable
