"""DNS exporters: decisions become record sets (desired), a plan against what a provider holds, a runner that applies it.

Shared, provider-independent parts: `model` (the types and the Provider protocol), `desired` (decisions to record
sets), `plan` (the diff with its churn threshold and safety refusals), `runner` (rate limit, retries with backoff
and jitter, latest desired state wins, verify after write). One module per provider beside them.
"""
