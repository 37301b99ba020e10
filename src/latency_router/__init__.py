"""latency-router: measure client-to-region latency and decide where each client goes."""

__version__ = "0.1.0"
