"""Persistence of the backend: one contract, an SQL and an in-memory implementation."""

from backend_stub.store.base import Store, Tx
from backend_stub.store.memory import MemoryStore

__all__ = ["MemoryStore", "Store", "Tx"]
