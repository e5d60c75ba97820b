"""The single source of truth for Emo8's label space: the 8 Mikels emotions and the 5 styles.

Everything that needs class names, their order, their polarity or the style names reads them from here.
"""

from __future__ import annotations

from typing import Final

#: The 8 Mikels emotions in Emo8's fixed class order (the ClassLabel ids of every release).
EMOTIONS: Final[tuple[str, ...]] = (
    "amusement",
    "anger",
    "awe",
    "contentment",
    "disgust",
    "excitement",
    "fear",
    "sadness",
)

#: Polarity for the 2-class mode.
POSITIVE: Final[frozenset[str]] = frozenset({"amusement", "awe", "contentment", "excitement"})
NEGATIVE: Final[frozenset[str]] = frozenset({"anger", "disgust", "fear", "sadness"})

#: The 5 styles (domains) Emo8 covers.
DOMAINS: Final[tuple[str, ...]] = ("cartoon", "natural", "realistic", "scifi", "advertising")


def polarity(emotion: str) -> str:
    """Return ``"positive"`` or ``"negative"`` for one of :data:`EMOTIONS`; raise ``ValueError`` otherwise."""
    if emotion in POSITIVE:
        return "positive"
    if emotion in NEGATIVE:
        return "negative"
    raise ValueError(f"unknown emotion {emotion!r}; expected one of {', '.join(EMOTIONS)}")


def normalise_label(label: str | None) -> str | None:
    """Map a free-text label (any case, surrounding spaces) to a canonical emotion name, or None if it is none."""
    if label is None:
        return None
    key = str(label).strip().lower()
    return key if key in EMOTIONS else None
