"""Audits: measured noise amplification per method, and empirical privacy (one-run auditing)."""
