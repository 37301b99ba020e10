"""The errors DNS providers raise; messages name the provider and never a secret."""

from __future__ import annotations

import re

_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@")
_URL_QUERY = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^?#\s'\"]*)[?#][^\s'\"]*")


class ProviderError(Exception):
    """A provider call that failed; the message names the provider and never a secret."""

    def __init__(self, provider: str, message: str, *, retryable: bool = True) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider, self.retryable = provider, retryable


def public_url(url: str) -> str:
    """The URL as a message may show it: without user:password@, query string or fragment."""
    return scrub_urls(url)


def scrub_urls(text: str) -> str:
    """The text with every URL in it stripped of user:password@, query string and fragment."""
    return _URL_QUERY.sub(r"\1", _URL_USERINFO.sub(r"\1", text))
