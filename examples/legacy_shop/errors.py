"""Failures the shop reports to its clients, each with its HTTP status and JSON body."""

from __future__ import annotations

from typing import Any


class ShopError(Exception):
    """Base of every failure answered as ``{"error": ..., "detail": ...}``."""

    status = 400
    error = "bad request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail, **self.extra}


class InvalidInput(ShopError):
    status = 400
    error = "bad request"


class UnknownSku(ShopError):
    status = 400
    error = "unknown sku"


class NotFound(ShopError):
    status = 404
    error = "not found"


class DuplicateBatch(ShopError):
    status = 409
    error = "duplicate batch"


class AlreadyAllocated(ShopError):
    status = 409
    error = "already allocated"


class OutOfStock(ShopError):
    status = 409
    error = "out of stock"
