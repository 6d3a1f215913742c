"""Inbound tickets: payload schema, normalization, webhook signatures, threading and the idempotent insert."""
