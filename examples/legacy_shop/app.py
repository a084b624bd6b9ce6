"""The shop's HTTP API (Flask): one database transaction per write request."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug import exceptions as http

from examples.legacy_shop import errors, operations, queries, validation
from examples.legacy_shop.database import make_engine, read_transaction, write_transaction
from examples.legacy_shop.schema import create_schema

MAX_BODY_BYTES = 1024 * 1024
ENGINE_KEY = "legacy_shop.engine"

log = logging.getLogger(__name__)

ResponseValue = tuple[Response, int]


def create_app(db_url: str) -> Flask:
    """The shop over the database at ``db_url``; creates its tables when absent."""
    engine = make_engine(db_url)
    create_schema(engine)

    app = Flask(__name__)
    # One byte more than allowed: a streamed (chunked) body over the limit is cut at the
    # limit without an error, so _body() must see that extra byte to refuse it.
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES + 1
    app.extensions[ENGINE_KEY] = engine

    @app.post("/batches")
    def add_batch() -> ResponseValue:
        body = _body()
        ref = validation.text(body, "ref")
        sku = validation.text(body, "sku")
        qty = validation.quantity(body)
        eta = validation.optional_date(body, "eta")
        with write_transaction(engine) as conn:
            operations.add_batch(conn, ref, sku, qty, eta)
        eta_text = None if eta is None else eta.isoformat()
        return jsonify(ref=ref, sku=sku, qty=qty, eta=eta_text), 201

    @app.patch("/batches/<ref>")
    def change_batch_qty(ref: str) -> ResponseValue:
        qty = validation.quantity(_body(), minimum=0)
        with write_transaction(engine) as conn:
            change = operations.change_batch_qty(conn, ref, qty)
        return jsonify(
            ref=ref,
            qty=qty,
            reallocated=[asdict(line) for line in change.reallocated],
            unallocated=[asdict(line) for line in change.unallocated],
        ), 200

    @app.get("/batches/<ref>")
    def get_batch(ref: str) -> ResponseValue:
        with read_transaction(engine) as conn:
            found = queries.batch(conn, ref)
        if found is None:
            raise errors.NotFound(f"no batch {ref}")
        return jsonify(
            ref=found.ref,
            sku=found.sku,
            qty=found.qty,
            eta=None if found.eta is None else found.eta.isoformat(),
            allocated=found.allocated,
            available=found.available,
        ), 200

    @app.post("/allocate")
    def allocate() -> ResponseValue:
        body = _body()
        orderid = validation.text(body, "orderid")
        sku = validation.text(body, "sku")
        qty = validation.quantity(body)
        with write_transaction(engine) as conn:
            batchref = operations.allocate(conn, orderid, sku, qty)
        return jsonify(batchref=batchref), 201

    @app.post("/deallocate")
    def deallocate() -> ResponseValue:
        body = _body()
        orderid = validation.text(body, "orderid")
        sku = validation.text(body, "sku")
        with write_transaction(engine) as conn:
            batchref = operations.deallocate(conn, orderid, sku)
        return jsonify(orderid=orderid, sku=sku, batchref=batchref), 200

    @app.get("/allocations/<orderid>")
    def allocations(orderid: str) -> ResponseValue:
        with read_transaction(engine) as conn:
            found = queries.allocations_for(conn, orderid)
        if not found:
            raise errors.NotFound(f"no allocations for order {orderid}")
        return jsonify([asdict(allocation) for allocation in found]), 200

    _register_error_handlers(app)
    return app


def _body() -> dict[str, Any]:
    raw = request.get_data(cache=False)
    if len(raw) > MAX_BODY_BYTES:
        raise http.RequestEntityTooLarge()
    return validation.json_object(raw)


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(errors.ShopError)
    def shop_error(exc: errors.ShopError) -> ResponseValue:
        return jsonify(exc.body()), exc.status

    @app.errorhandler(http.HTTPException)
    def http_error(exc: http.HTTPException) -> Response:
        response = jsonify(error=_name(exc), detail=_detail(exc))
        response.status_code = exc.code or 500
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value  # e.g. Allow on 405
        return response

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> ResponseValue:
        log.exception("unexpected error in %s %s", request.method, request.path)
        detail = f"unexpected {type(exc).__name__}; see the server log"
        return jsonify(error="internal server error", detail=detail), 500


def _name(exc: http.HTTPException) -> str:
    return (exc.name or "error").lower()


def _detail(exc: http.HTTPException) -> str:
    if isinstance(exc, http.NotFound):
        return f"no route {request.path}"
    if isinstance(exc, http.MethodNotAllowed):
        return f"{request.method} is not allowed on {request.path}"
    if isinstance(exc, http.RequestEntityTooLarge):
        return f"request body is larger than {MAX_BODY_BYTES} bytes"
    return exc.description or _name(exc)
