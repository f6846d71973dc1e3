"""Engines drive rows through a provider: real time and batch, sharing one ledger."""
