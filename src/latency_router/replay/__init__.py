"""Offline evaluation of policies on recorded or generated samples; `generate` writes scenario samples CSVs."""
