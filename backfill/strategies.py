"""What each retrieval strategy scores with.

A strategy maps a backfill ratio to two *sides*: the un-backfilled part U of the gallery is scored by one
(query array, gallery array) pair, the backfilled part B by another. A side that is ``None`` is unreachable
(``new_partial`` cannot see U). Array names are those of :data:`backfill.embeddings.ARRAY_NAMES`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # strategies are plain data; only the type hints need the bundle
    import numpy as np

    from backfill.embeddings import Embeddings

__all__ = [
    "ALIASES",
    "NEW_REFERENCE",
    "STRATEGIES",
    "Alias",
    "Side",
    "Space",
    "Strategy",
    "get_strategy",
    "resolve_strategy",
]


class Space(IntEnum):
    """Which model embedded the gallery item a score was computed against.

    ``OLD``: the stored old-model embedding (the item is not backfilled yet); ``NEW``: a re-embedded one
    (backfilled: the new model's, or the BCT model's for ``bct``). The integer values are those stored in
    :attr:`backfill.indexing.SearchResult.spaces`.
    """

    OLD = 0
    NEW = 1

    @property
    def label(self) -> str:
        """``"old"`` or ``"new"``, for display."""
        return self.name.lower()


# Backward-compatible names of the two members.
OLD_SPACE = Space.OLD
NEW_SPACE = Space.NEW


@dataclass(frozen=True)
class Side:
    """Score gallery items by ``dot(queries.<query>, gallery.<gallery>)``; ``space`` tags those scores."""

    query: str
    gallery: str
    space: Space

    def arrays(self, queries: Embeddings, gallery: Embeddings) -> tuple[np.ndarray, np.ndarray]:
        """The ``(query, gallery)`` arrays this side scores with.

        Raises
        ------
        ValueError
            Naming the array, when one is missing or the two dimensions differ.
        """
        q, g = queries.array(self.query), gallery.array(self.gallery)
        if q.shape[1] != g.shape[1]:
            raise ValueError(
                f"dimension mismatch: query array '{self.query}' has d={q.shape[1]} but gallery array"
                f" '{self.gallery}' has d={g.shape[1]}"
            )
        return q, g


@dataclass(frozen=True)
class Strategy:
    """A retrieval strategy.

    Parameters
    ----------
    name : str
        Identifier used by the CLI and JSON.
    label : str
        Human-readable name.
    u : Side or None
        Side scoring the un-backfilled items U (``None``: U is unreachable).
    b : Side or None
        Side scoring the backfilled items B.
    at_full : Side or None, default=None
        If set, the single side used for every item at ratio exactly 1 (``offline`` switches models only
        once backfilling is complete).
    query_passes : int, default=1
        Model forward passes per query (psi counts as tiny).
    """

    name: str
    label: str
    u: Side | None
    b: Side | None
    at_full: Side | None = None
    query_passes: int = 1

    def sides(self, ratio: float) -> tuple[Side | None, Side | None]:
        """``(u_side, b_side)`` in force at ``ratio`` (assumed validated, in [0, 1])."""
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

    def runs_on(self, available: Iterable[str]) -> bool:
        """Whether a bundle holding the arrays ``available`` (queries = gallery) can run the strategy."""
        return set(self.required_arrays) <= set(available)


_OLD = Side("old", "old", Space.OLD)
_NEW = Side("new", "new", Space.NEW)

#: The compared strategies, in the paper's order.
STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("old", "old model only", _OLD, _OLD),
        Strategy("offline", "offline (switch at 100%)", _OLD, _OLD, at_full=_NEW),
        Strategy("new_partial", "new model, backfilled part only", None, _NEW),
        Strategy(
            "bct", "BCT (one compatible space)", Side("bct", "old", Space.OLD), Side("bct", "bct", Space.NEW)
        ),
        Strategy("rank_merge", "distance rank merge", _OLD, _NEW, query_passes=2),
        Strategy("rt_merge", "reverse-transform merge", Side("transformed", "old", Space.OLD), _NEW),
    )
}

#: The new/new reference (a gallery backfilled instantly); not a backfilling strategy, used for the
#: relative gain's upper end.
NEW_REFERENCE = Strategy("new", "new model, fully backfilled (reference)", _NEW, _NEW)


@dataclass(frozen=True)
class Alias:
    """A method name that runs a strategy of :data:`STRATEGIES` on a particular kind of embedding file.

    Parameters
    ----------
    name : str
        The method's name (as in the README, the app and ``results.md``).
    strategy : str
        The strategy it runs.
    embed_variant : str
        The ``backfill embed --variant`` whose file it needs.
    meaning : str
        What the file's arrays are for this method.
    """

    name: str
    strategy: str
    embed_variant: str
    meaning: str

    @property
    def label(self) -> str:
        """What is evaluated, e.g. ``"full (rt_merge on transformed)"``."""
        return f"{self.name} ({self.strategy} on transformed)"


#: The full method is ``rt_merge`` fed with the metric-compatible embeddings, so it is no separate strategy
#: of the engine; these names say which file makes ``rt_merge`` the full method.
ALIASES: dict[str, Alias] = {
    a.name: a
    for a in (
        Alias("full", "rt_merge", "full", "transformed = psi_mc(new)"),
        Alias("full_rho", "rt_merge", "full_rho", "new = rho(new), transformed = psi_mc(rho(new))"),
    )
}


def get_strategy(name: str | Strategy) -> Strategy:
    """The strategy called ``name``: one of :data:`STRATEGIES` or ``"new"`` (the new/new reference).

    Parameters
    ----------
    name : str or Strategy
        A :class:`Strategy` is returned unchanged.

    Returns
    -------
    Strategy

    Raises
    ------
    ValueError
        Listing the valid names, for an unknown name (aliases such as ``"full"`` included: see
        :func:`resolve_strategy`).
    """
    if isinstance(name, Strategy):
        return name
    if name == NEW_REFERENCE.name:
        return NEW_REFERENCE
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}") from None


def resolve_strategy(name: str | Strategy) -> Strategy:
    """Like :func:`get_strategy`, also accepting the method names of :data:`ALIASES`.

    An alias gives its strategy renamed to the alias and labelled with what is evaluated, so that results
    are reported under the method's name, e.g. ``full`` labelled ``"full (rt_merge on transformed)"``.
    """
    alias = ALIASES.get(name) if isinstance(name, str) else None
    if alias is None:
        try:
            return get_strategy(name)
        except ValueError:
            valid = ", ".join([*STRATEGIES, *ALIASES])
            raise ValueError(f"unknown strategy {name!r}; expected one of {valid}") from None
    return replace(STRATEGIES[alias.strategy], name=alias.name, label=alias.label)
