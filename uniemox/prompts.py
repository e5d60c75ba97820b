"""One text prompt per image from whatever attributes it has, following the UniEmoX paper's template.

Paper: "The scene type of this photo is {scene}. The main subjects are {a, b and c}. The image has a
brightness of {b} and color saturation of {c}. Human facial expression is {fe}. The action being performed
is {act}. The overall emotion conveyed is {emotion}." Sentences whose attribute is missing are left out;
Emo8's style (domain), title keywords and detected people fill in where EmoSet's attributes do not exist.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

_STOP = frozenset(
    {
        "a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "for", "with", "from", "by", "is", "are",
        "was", "were", "be", "this", "that", "these", "those", "it", "its", "my", "our", "your", "his", "her",
        "their", "img", "image", "photo", "picture", "jpg", "jpeg", "png", "dsc", "copy", "file", "untitled",
    }
)  # fmt: skip
_BRIGHTNESS = ("very dark", "dark", "moderate", "bright", "very bright")
_LEVELS = ("very low", "low", "medium", "high", "very high")
#: Hasler & Suesstrunk (2003) colourfulness bins, for values on their metric's own scale (> 1).
_HASLER = ((15, "very low"), (33, "low"), (45, "medium"), (59, "medium"), (82, "high"), (109, "high"))


def _fifths(x: float, words: Sequence[str]) -> str:
    return words[min(4, max(0, int(x * 5)))]


def brightness_word(value: float) -> str:
    """Mean brightness in [0, 1] (EmoSet) or [0, 255] (8-bit mean) -> one of five words."""
    return _fifths(value / 255.0 if value > 1.0 else value, _BRIGHTNESS)


def colorfulness_word(value: float) -> str:
    """Colourfulness in [0, 1] (EmoSet) or on Hasler & Suesstrunk's scale (> 1) -> one of five words."""
    if value <= 1.0:
        return _fifths(value, _LEVELS)
    return next((word for limit, word in _HASLER if value < limit), "very high")


def title_keywords(title: str, k: int = 3) -> list[str]:
    """Up to ``k`` distinct content words of a title, in order (no stop words, digits or file-name noise)."""
    words = [w.lower() for w in re.findall(r"[A-Za-z][A-Za-z'-]+", title)]
    out: list[str] = []
    for w in words:
        if w not in _STOP and len(w) > 2 and w not in out:
            out.append(w)
    return out[:k]


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@dataclass(frozen=True)
class ImageAttributes:
    emotion: str | None = None
    domain: str | None = None
    scene: str | None = None
    objects: tuple[str, ...] = field(default_factory=tuple)
    title: str | None = None
    brightness: float | None = None
    colorfulness: float | None = None
    facial_expression: str | None = None
    human_action: str | None = None
    num_people: int = 0


def build_prompt(a: ImageAttributes) -> str:
    parts: list[str] = []
    if a.scene:
        parts.append(f"The scene type of this photo is {a.scene.replace('_', ' ')}.")
    if a.domain:
        parts.append(f"The style of this image is {a.domain}.")
    subjects = [o.lower() for o in a.objects if o] or (title_keywords(a.title) if a.title else [])
    if subjects:
        parts.append(f"The main subjects are {_join(subjects[:3])}.")
    light = [] if a.brightness is None else [f"a brightness of {brightness_word(a.brightness)}"]
    color = [] if a.colorfulness is None else [f"color saturation of {colorfulness_word(a.colorfulness)}"]
    if light or color:
        parts.append(f"The image has {' and '.join(light + color)}.")
    if a.facial_expression:
        parts.append(f"Human facial expression is {a.facial_expression}.")
    elif a.num_people:
        parts.append(
            "There is one person in the image." if a.num_people == 1 else "There are people in the image."
        )
    if a.human_action:
        parts.append(f"The action being performed is {a.human_action}.")
    if a.emotion:
        parts.append(f"The overall emotion conveyed is {a.emotion}.")
    return " ".join(parts) or "A photo."
