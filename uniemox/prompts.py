"""One text prompt per image from whatever attributes it has, following the UniEmoX paper's template.

Paper: "The scene type of this photo is {scene}. The main subjects are {a, b and c}. The image has a
brightness of {b} and color saturation of {c}. Human facial expression is {fe}. The action being performed
is {act}. The overall emotion conveyed is {emotion}." Sentences whose attribute is missing are left out;
Emo8's style (domain), title keywords and detected people fill in where EmoSet's attributes do not exist.

Numeric attributes are read on the scale their data source declares (:class:`AttributeScales`), never guessed
from the value. A prompt too long for the teacher's text encoder loses its least important sentences first
(:data:`DROP_ORDER`); the emotion sentence is never dropped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

_STOP = frozenset(
    {
        "a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "for", "with", "from", "by", "is", "are",
        "was", "were", "be", "this", "that", "these", "those", "it", "its", "my", "our", "your", "his", "her",
        "their", "img", "image", "photo", "picture", "jpg", "jpeg", "png", "dsc", "copy", "file", "untitled",
    }
)  # fmt: skip
_BRIGHTNESS = ("very dark", "dark", "moderate", "bright", "very bright")
_LEVELS = ("very low", "low", "medium", "high", "very high")
#: Hasler & Suesstrunk (2003) colourfulness bins (upper limits on their metric's own scale).
_HASLER = ((15, "very low"), (33, "low"), (45, "medium"), (59, "medium"), (82, "high"), (109, "high"))


def _fifths(x: float, words: Sequence[str]) -> str:
    return words[min(4, max(0, int(x * 5)))]


def _hasler(value: float) -> str:
    return next((word for limit, word in _HASLER if value < limit), "very high")


#: Brightness scales: name -> value -> word. "unit": mean luma in [0, 1] (Emo8, EmoSet); "8bit": 0-255.
BRIGHTNESS_SCALES: dict[str, Callable[[float], str]] = {
    "unit": lambda v: _fifths(v, _BRIGHTNESS),
    "8bit": lambda v: _fifths(v / 255.0, _BRIGHTNESS),
}
#: Colourfulness scales: "hasler": Hasler & Suesstrunk's metric, 0 to about 150 (Emo8); "unit": [0, 1] (EmoSet).
COLORFULNESS_SCALES: dict[str, Callable[[float], str]] = {
    "hasler": _hasler,
    "unit": lambda v: _fifths(v, _LEVELS),
}


@dataclass(frozen=True)
class AttributeScales:
    """The units of a data source's numeric attributes; the source declares them (see ``uniemox.data``)."""

    brightness: str = "unit"
    colorfulness: str = "hasler"

    def __post_init__(self) -> None:
        for what, value, known in (
            ("brightness", self.brightness, BRIGHTNESS_SCALES),
            ("colorfulness", self.colorfulness, COLORFULNESS_SCALES),
        ):
            if value not in known:
                raise ValueError(f"unknown {what} scale {value!r}; choose one of {', '.join(known)}")


#: Emo8 releases: brightness = mean luma in [0, 1], colorfulness = Hasler & Suesstrunk.
EMO8_SCALES = AttributeScales("unit", "hasler")
#: EmoSet annotations: both in [0, 1].
EMOSET_SCALES = AttributeScales("unit", "unit")


def brightness_word(value: float, scale: str) -> str:
    """Brightness on ``scale`` (a key of :data:`BRIGHTNESS_SCALES`) -> one of five words."""
    return BRIGHTNESS_SCALES[scale](value)


def colorfulness_word(value: float, scale: str) -> str:
    """Colourfulness on ``scale`` (a key of :data:`COLORFULNESS_SCALES`) -> one of five words."""
    return COLORFULNESS_SCALES[scale](value)


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


#: Sentence kinds, least important first: what a prompt loses, in this order, when it is too long for the
#: text encoder. The emotion sentence is not in the list: it is never dropped.
DROP_ORDER = ("appearance", "people", "style", "subjects", "scene", "action", "expression")


def prompt_sentences(a: ImageAttributes, scales: AttributeScales = EMO8_SCALES) -> list[tuple[str, str]]:
    """(kind, sentence) pairs in the paper's order; kinds are those of :data:`DROP_ORDER` plus "emotion"."""
    parts: list[tuple[str, str]] = []
    if a.scene:
        parts.append(("scene", f"The scene type of this photo is {a.scene.replace('_', ' ')}."))
    if a.domain:
        parts.append(("style", f"The style of this image is {a.domain}."))
    subjects = [o.lower() for o in a.objects if o] or (title_keywords(a.title) if a.title else [])
    if subjects:
        parts.append(("subjects", f"The main subjects are {_join(subjects[:3])}."))
    light = (
        []
        if a.brightness is None
        else [f"a brightness of {brightness_word(a.brightness, scales.brightness)}"]
    )
    color = (
        []
        if a.colorfulness is None
        else [f"color saturation of {colorfulness_word(a.colorfulness, scales.colorfulness)}"]
    )
    if light or color:
        parts.append(("appearance", f"The image has {' and '.join(light + color)}."))
    if a.facial_expression:
        parts.append(("expression", f"Human facial expression is {a.facial_expression}."))
    elif a.num_people:
        people = (
            "There is one person in the image." if a.num_people == 1 else "There are people in the image."
        )
        parts.append(("people", people))
    if a.human_action:
        parts.append(("action", f"The action being performed is {a.human_action}."))
    if a.emotion:
        parts.append(("emotion", f"The overall emotion conveyed is {a.emotion}."))
    return parts


def build_prompt(
    a: ImageAttributes,
    scales: AttributeScales = EMO8_SCALES,
    fits: Callable[[str], bool] | None = None,
) -> str:
    """The prompt of one image. ``fits`` (e.g. ``ClipTeacher.prompt_fits``) says whether a prompt fits the
    text encoder untruncated; while it does not, the least important sentence (:data:`DROP_ORDER`) goes."""
    parts = prompt_sentences(a, scales)
    text = " ".join(s for _, s in parts) or "A photo."
    if fits is None:
        return text
    for kind in DROP_ORDER:
        if fits(text):
            return text
        parts = [p for p in parts if p[0] != kind]
        text = " ".join(s for _, s in parts) or "A photo."
    if not fits(text):
        log.warning("prompt still too long for the text encoder with only its emotion sentence: %r", text)
    return text
