"""Words for printed text: counts with the right plural ("1 edge", "2 edges")."""

from __future__ import annotations

__all__ = ["plural"]


def plural(n: float, noun: str, many: str | None = None) -> str:
    """``n`` and the noun, singular only for exactly one (``many`` for irregular plurals).

    Example:
        >>> plural(1, "edge"), plural(0, "edge"), plural(2.5, "forward pass", "forward passes")
        ('1 edge', '0 edges', '2.5 forward passes')
    """
    word = noun if n == 1 else (many or noun + "s")
    return f"{n:g} {word}" if isinstance(n, float) else f"{n} {word}"
