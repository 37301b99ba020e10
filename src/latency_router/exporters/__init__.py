"""Exporters: what reads decisions and the table and publishes them (Prometheus metrics; DNS providers)."""
