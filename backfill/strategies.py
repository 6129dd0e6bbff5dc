"""What each retrieval strategy scores with (method.md's table).

A strategy maps a backfill ratio to two *sides*: the un-backfilled part U is scored by one (query array,
gallery array) pair, the backfilled part B by another, each pair tagged with the space it lives in
(``0`` = old, ``1`` = new). A side that is ``None`` is unreachable (``new_partial`` cannot see U).
Array names refer to :data:`backfill.embeddings.ARRAY_NAMES`. ``full`` is ``rt_merge`` fed with the
metric-compatible embeddings, so it is not a separate strategy here.
"""

from __future__ import annotations

from dataclasses import dataclass

OLD_SPACE = 0
NEW_SPACE = 1


@dataclass(frozen=True)
class Side:
    """Score items of one part of the gallery by ``dot(queries.<query>, gallery.<gallery>)`` in ``space``."""

    query: str
    gallery: str
    space: int


@dataclass(frozen=True)
class Strategy:
    """A retrieval strategy.

    Attributes:
        name: identifier used by the CLI and JSON.
        label: human-readable name.
        u: side scoring the un-backfilled items U (``None`` = U unreachable).
        b: side scoring the backfilled items B.
        at_full: if set, the single side used for every item at ratio exactly 1 (``offline`` switches
            models only once backfilling is complete).
        query_passes: model forward passes per query (method.md's cost column; psi counts as tiny).
    """

    name: str
    label: str
    u: Side | None
    b: Side | None
    at_full: Side | None = None
    query_passes: int = 1

    def sides(self, ratio: float) -> tuple[Side | None, Side | None]:
        """``(u_side, b_side)`` in force at ``ratio`` (``ratio`` is assumed validated, in [0, 1])."""
        if self.at_full is not None and ratio >= 1.0:
            return self.at_full, self.at_full
        return self.u, self.b

    @property
    def sides_used(self) -> tuple[Side, ...]:
        """Every side the strategy may use at some ratio."""
        return tuple(s for s in dict.fromkeys((self.u, self.b, self.at_full)) if s is not None)

    @property
    def query_arrays(self) -> tuple[str, ...]:
        """Names of the query arrays the strategy needs (for some ratio)."""
        return tuple(dict.fromkeys(s.query for s in self.sides_used))

    @property
    def gallery_arrays(self) -> tuple[str, ...]:
        """Names of the gallery arrays the strategy needs (for some ratio)."""
        return tuple(dict.fromkeys(s.gallery for s in self.sides_used))

    @property
    def required_arrays(self) -> tuple[str, ...]:
        """Query and gallery arrays together (what a bundle must hold when queries are the gallery)."""
        return tuple(dict.fromkeys(self.query_arrays + self.gallery_arrays))


_OLD = Side("old", "old", OLD_SPACE)
_NEW = Side("new", "new", NEW_SPACE)

#: The compared strategies, in method.md's order.
STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("old", "old model only", _OLD, _OLD),
        Strategy("offline", "offline (switch at 100%)", _OLD, _OLD, at_full=_NEW),
        Strategy("new_partial", "new model, backfilled part only", None, _NEW),
        Strategy(
            "bct", "BCT (one compatible space)", Side("bct", "old", OLD_SPACE), Side("bct", "bct", NEW_SPACE)
        ),
        Strategy("rank_merge", "distance rank merge", _OLD, _NEW, query_passes=2),
        Strategy("rt_merge", "reverse-transform merge", Side("transformed", "old", OLD_SPACE), _NEW),
    )
}

#: The new/new reference (a gallery backfilled instantly); not a backfilling strategy, used for the
#: relative gain's upper end.
NEW_REFERENCE = Strategy("new", "new model, fully backfilled (reference)", _NEW, _NEW)


def get_strategy(name: str | Strategy) -> Strategy:
    """The strategy called ``name`` (one of :data:`STRATEGIES` or ``"new"``, the new/new reference).

    A :class:`Strategy` is returned unchanged. ``ValueError`` lists the valid names otherwise.
    """
    if isinstance(name, Strategy):
        return name
    if name == NEW_REFERENCE.name:
        return NEW_REFERENCE
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}") from None
