"""The new write path: the new system's own decisions for the products it owns.

The facade calls :class:`WritePath` for the write routes of a product the new system owns
(docs/write-path.md). Each call is one decision: one unit of work (one database
transaction on the shared engine) and one message bus, so a ``WritePath`` serves any
number of threads and never shares a unit of work between them. In that transaction:

1. the write group's ``write_ownership`` row is read ``FOR SHARE`` (a move takes it
   ``FOR UPDATE``: it waits for the decisions in flight, and a decision waits for a move
   in flight), and unless the product is the new system's now the call raises
   :class:`NotOwned` and changes nothing. For ``PATCH /batches/<ref>`` the product is the
   batch's; a batch the new system does not know is answered by whoever owns every
   product (:meth:`Ownership.owner_of_unknown_batch`);
2. the command runs through the message bus with the new domain's own rules; a refusal
   is the model's :class:`DomainError`, whose message is legacy's ``detail``;
3. every event the decision raised goes to the outbox with one decision block
   (``{"id", "route", "sku", "summary", "events", "index"}``, the summary in decision
   parity's words), in the same transaction.

**Concurrent writes to one product: a row lock, not optimistic retries.** The repository
loads a product with its ``products`` row locked ``SELECT ... FOR UPDATE`` (SQLite: the
engine's ``BEGIN IMMEDIATE`` serialises writers), so two decisions about one product run
one after the other, the second on the first's committed state, and an allocation can
never choose from a stale picture. Why not an optimistic version check with retries: the
write routes are hot on exactly the products people are buying, where optimistic
transactions collide the most; each collision throws a whole decision away, and any
bound on retries turns contention into failed requests. The lock is what legacy does (it
locks ``prod_catalog``), costs one wait instead of a redo, and the transaction is
pessimistic already (it holds the ownership row). The version check stays as the
backstop: a write that somehow was not serialised raises ``ConcurrentUpdate`` instead of
losing an update. That, a unique key two first batches of a new sku both inserted, and
the database's deadlock or serialisation failures are retried (the whole decision, three
attempts at most); nothing else is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from tenacity import Retrying, retry_if_exception, stop_after_attempt

from new_domain.adapters.database import ConcurrentUpdate, create_engine, describe_error
from new_domain.bootstrap import bootstrap
from new_domain.domain import commands
from new_domain.domain.model import Move, TieBreak
from new_domain.domain.ownership import NotOwned, Owner, Ownership
from new_domain.ingest import decisions
from new_domain.service_layer.unit_of_work import AbstractUnitOfWork, SqlAlchemyUnitOfWork

ATTEMPTS = 3
HELD_WAIT_S = 2.0
"""How long :meth:`WritePath.held` waits for the ownership row (a move holds it briefly)."""
RETRIED_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock


class StaleConnection(Exception):
    """The pooled connection was found closed by the server before anything was
    committed: the work is tried again on a fresh one."""


@dataclass(frozen=True)
class QuantityChanged:
    """What ``PATCH /batches/<ref>`` decided: the lines it moved, in legacy's order
    (oldest allocation first)."""

    sku: str
    reallocated: list[tuple[str, str]]
    """(orderid, batchref it went to)"""
    unallocated: list[str]
    """orderids left without a batch"""


class WritePath:
    """The new system's own write decisions for the products it owns. Thread-safe: one
    engine, one unit of work (and message bus) per call."""

    def __init__(
        self,
        db: str | Engine,
        *,
        group: str = "allocation",
        tie_break: TieBreak | str = "created",
    ) -> None:
        engine = create_engine(db, for_writes=True) if isinstance(db, str) else db
        self._engine: Engine | None = engine if isinstance(db, str) else None
        self._setup(lambda: SqlAlchemyUnitOfWork(engine, owns_engine=False), group, tie_break)

    @classmethod
    def on(
        cls,
        units: Callable[[], AbstractUnitOfWork],
        *,
        group: str = "allocation",
        tie_break: TieBreak | str = "created",
    ) -> WritePath:
        """A write path taking each call's unit of work from ``units`` (the specs' fakes)."""
        path = cls.__new__(cls)
        path._engine = None
        path._setup(units, group, tie_break)
        return path

    def _setup(
        self, units: Callable[[], AbstractUnitOfWork], group: str, tie_break: TieBreak | str
    ) -> None:
        self._units = units
        self.group = group
        self.tie_break = TieBreak(tie_break) if isinstance(tie_break, str) else tie_break

    def __enter__(self) -> WritePath:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- reads (no lock) -------------------------------------------------------------------

    def ownership(self) -> Ownership:
        """The group's ownership as stored now."""
        with self._units() as uow:
            return uow.ownership.read(self.group)

    @contextmanager
    def held(self, wait: float = HELD_WAIT_S) -> Iterator[Ownership]:
        """The group's ownership, read ``FOR SHARE`` and held until the block ends.

        The facade sends a write to legacy inside this block: a move (``FOR UPDATE``)
        waits until legacy has answered it, so every write the facade gave legacy under
        the old ownership commits before the move, hence before its fence. Without it a
        write confirmed just before a move, but slow to reach legacy, could commit after
        a takeover's fence and become an ownership violation the client was told was
        accepted."""
        with ExitStack() as held:
            yield self._hold(held, wait)

    def _hold(self, held: ExitStack, wait: float) -> Ownership:
        """Open a unit of work on ``held`` and read the ownership ``FOR SHARE`` in it;
        once more on a fresh connection when the pooled one was dead."""
        for attempt in range(2):
            try:
                with ExitStack() as opened:
                    uow = opened.enter_context(self._units())
                    with uow.reading_ahead():  # one round trip
                        uow.limit_waits(wait)  # a move in flight or a hung database
                        read = uow.ownership.read_ahead(self.group, lock="share")
                    ownership = read()
                    held.push(opened.pop_all())
                    return ownership
            except sa_exc.DBAPIError as error:
                if attempt or not error.connection_invalidated:
                    raise
        raise AssertionError("unreachable: the second attempt returns or raises")

    def sku_of_batch(self, ref: str) -> str | None:
        """The product batch ``ref`` belongs to in the new model (None: unknown batch)."""
        with self._units() as uow:
            return uow.products.sku_of_batch(ref)

    # -- decisions -------------------------------------------------------------------------

    def add_batch(self, ref: str, sku: str, qty: int, eta: date | None) -> None:
        """``POST /batches``: ``DuplicateBatch`` when the reference is taken."""

        def decided(_sku: str, _result: None) -> decisions.LegacyDecision:
            return decisions.NewBatch(ref, sku)

        command = commands.CreateBatch(ref, sku, qty, eta)
        self._decide(decisions.ADD_BATCH, command, decided, sku=sku)

    def allocate(self, orderid: str, sku: str, qty: int) -> str:
        """``POST /allocate``: the batch the order's line went to."""

        def decided(_sku: str, batchref: str) -> decisions.LegacyDecision:
            return decisions.Allocation(orderid, sku, qty, batchref)

        command = commands.Allocate(orderid, sku, qty)
        _, batchref = self._decide(decisions.ALLOCATE, command, decided, sku=sku, order=orderid)
        return str(batchref)

    def deallocate(self, orderid: str, sku: str) -> str:
        """``POST /deallocate``: the batch the order's line was taken from."""

        def decided(_sku: str, batchref: str) -> decisions.LegacyDecision:
            return decisions.Deallocation(orderid, sku, batchref)

        command = commands.Deallocate(orderid, sku)
        _, batchref = self._decide(decisions.DEALLOCATE, command, decided, sku=sku, order=orderid)
        return str(batchref)

    def change_batch_quantity(self, ref: str, qty: int) -> QuantityChanged:
        """``PATCH /batches/<ref>``: set the quantity and move the lines that no longer
        fit (the newest off, then reallocated oldest first)."""

        def decided(sku: str, moves: list[Move]) -> decisions.LegacyDecision:
            went = frozenset((move.orderid, move.to_batch) for move in moves)
            return decisions.QuantityChange(ref, sku, qty, went)

        sku, moves = self._decide(
            decisions.CHANGE_QUANTITY, commands.SetBatchQuantity(ref, qty), decided, ref=ref
        )
        return QuantityChanged(
            sku=sku,
            reallocated=[(m.orderid, m.to_batch) for m in moves if m.to_batch is not None],
            unallocated=[m.orderid for m in moves if m.to_batch is None],
        )

    def close(self) -> None:
        """Release the engine this write path created (not one it was given)."""
        if self._engine is not None:
            self._engine.dispose()

    # -- one decision ----------------------------------------------------------------------

    def _decide(
        self,
        route: str,
        command: commands.Command,
        decided: Callable[[str, Any], decisions.LegacyDecision],
        *,
        sku: str | None = None,
        ref: str | None = None,
        order: str | None = None,
    ) -> tuple[str, Any]:
        """Run ``command`` as one decision about ``sku``'s product (or batch ``ref``'s),
        retried as a whole on the failures the module describes; (sku, its result).
        ``order``: the order the command is about (its lines load with the product)."""
        for attempt in Retrying(
            stop=stop_after_attempt(ATTEMPTS), retry=retry_if_exception(_retried), reraise=True
        ):
            with attempt:
                return self._once(route, command, decided, sku, ref, order)
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    def _once(
        self,
        route: str,
        command: commands.Command,
        decided: Callable[[str, Any], decisions.LegacyDecision],
        sku: str | None,
        ref: str | None,
        order: str | None = None,
    ) -> tuple[str, Any]:
        uow = self._units()
        bus = bootstrap(uow=uow, tie_break=self.tie_break)
        with uow:
            with _stale_before_commit():  # nothing written yet: retried
                if ref is None and sku is not None:
                    # the ownership (its share lock first), the product and the order's lines:
                    # one round trip; the product is only used when the new system owns it
                    with uow.reading_ahead():
                        read = uow.ownership.read_ahead(self.group, lock="share")
                        uow.products.preload(skus=[sku], orderids=[] if order is None else [order])
                    ownership = read()
                else:
                    ownership = uow.ownership.read(self.group, lock="share")
                if ref is not None:
                    sku = uow.products.sku_of_batch(ref)
                owner = ownership.owner_of_unknown_batch() if sku is None else ownership.owner(sku)
                if owner is not Owner.NEW:
                    raise NotOwned(sku or "", owner)
                with uow.outbox.decision(route, sku or "") as decision:
                    result = bus.handle(command)
                    decision.summary = summary(decided(sku or "", result))
            uow.commit()  # a connection lost here may have committed: not retried
        return sku or "", result


def summary(decision: decisions.LegacyDecision) -> str:
    """Decision parity's words for ``decision`` (``allocated to b1``, ``created`` ...)."""
    return decisions.decision_words(decision)[1]


@contextmanager
def _stale_before_commit() -> Iterator[None]:
    """Turn a connection found dead into :class:`StaleConnection` (retried)."""
    try:
        yield
    except sa_exc.DBAPIError as error:
        if error.connection_invalidated:
            raise StaleConnection(describe_error(error)) from error
        raise


def _retried(error: BaseException) -> bool:
    if isinstance(error, ConcurrentUpdate | sa_exc.IntegrityError | StaleConnection):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        return getattr(error.orig, "sqlstate", None) in RETRIED_SQLSTATES
    return False
