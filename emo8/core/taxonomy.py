"""The single source of truth for Emo8's label space: the 8 Mikels emotions and the 5 styles.

Everything that needs class names, their order, their polarity, their definitions, the zero-shot prompts or the
style names reads them from here:

* :data:`EMOTIONS`: the 8 Mikels emotions in Emo8's fixed class order (the ClassLabel ids of every release and
  the order of every 8-float vector the toolkit stores, e.g. ``suggestion_probs``);
* :data:`POSITIVE` / :data:`NEGATIVE` and :func:`polarity`: the 2-class mode;
* :data:`DEFINITIONS` and :data:`ADJECTIVES`: one line and one adjective per emotion (annotation guidelines,
  prompts);
* :data:`DOMAINS`: the 5 styles Emo8 covers, and :data:`STYLE_PHRASES`: how a prompt names each of them;
* :data:`PROMPT_TEMPLATES` and :func:`prompts`: the zero-shot prompt ensemble (every style, several phrasings);
* :data:`TAXONOMY`: all of the above as one :class:`Taxonomy` object, for code that wants it passed around.
"""

from __future__ import annotations

from dataclasses import dataclass
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

#: One-line definition of each emotion (what the image makes a viewer feel, not what a depicted person shows).
DEFINITIONS: Final[dict[str, str]] = {
    "amusement": "light-hearted fun: the image is funny, playful or silly and makes the viewer smile or laugh",
    "anger": "hostility or outrage: the image shows or provokes aggression, injustice, conflict or rage",
    "awe": "being overwhelmed by something vast, powerful or sublime: grand nature, the cosmos, monumental works",
    "contentment": "calm satisfaction: a peaceful, cosy, safe or gently pleasant scene",
    "disgust": "revulsion: rot, filth, gore, vermin or something repellent the viewer wants to turn away from",
    "excitement": "energetic anticipation: thrill, action, celebration, speed, adventure",
    "fear": "a sense of threat or danger: menace, darkness, horror, an imminent harm",
    "sadness": "loss, grief or loneliness: mourning, despair, abandonment, melancholy",
}

#: The adjective a prompt uses for each emotion ("an amusing photo").
ADJECTIVES: Final[dict[str, str]] = {
    "amusement": "amusing",
    "anger": "angry",
    "awe": "awe-inspiring",
    "contentment": "peaceful",
    "disgust": "disgusting",
    "excitement": "exciting",
    "fear": "frightening",
    "sadness": "sad",
}

#: How a prompt names each of the 5 styles (a style may have several phrasings).
STYLE_PHRASES: Final[dict[str, tuple[str, ...]]] = {
    "realistic": ("photo",),
    "natural": ("photo of nature",),
    "cartoon": ("cartoon", "illustration"),
    "scifi": ("science-fiction artwork",),
    "advertising": ("advertisement",),
}

#: Zero-shot prompt templates; ``{style}`` is a style phrase, ``{emotion}`` the emotion noun, ``{adjective}``
#: its adjective. Every template is used with every style phrase (the ensemble averages their text embeddings).
PROMPT_TEMPLATES: Final[tuple[str, ...]] = (
    "a {style} that evokes {emotion}.",
    "a {adjective} {style}.",
    "a {style} that makes people feel {emotion}.",
    "the overall emotion conveyed by this {style} is {emotion}.",
)


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


def label_index(label: str) -> int:
    """Return the class id (position in :data:`EMOTIONS`) of an emotion; raise ``ValueError`` otherwise."""
    name = normalise_label(label)
    if name is None:
        raise ValueError(f"unknown emotion {label!r}; expected one of {', '.join(EMOTIONS)}")
    return EMOTIONS.index(name)


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def prompts(emotion: str) -> list[str]:
    """Return the zero-shot prompt ensemble of one emotion: every template with every style phrase.

    Examples
    --------
    >>> prompts("awe")[:2]
    ['a photo that evokes awe.', 'an awe-inspiring photo.']
    """
    name = normalise_label(emotion)
    if name is None:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {', '.join(EMOTIONS)}")
    out: list[str] = []
    for template in PROMPT_TEMPLATES:
        for phrases in STYLE_PHRASES.values():
            for style in phrases:
                text = template.format(style=style, emotion=name, adjective=ADJECTIVES[name])
                if text.startswith("a ") and _article(text[2:]) == "an":
                    text = "an " + text[2:]
                out.append(text)
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class Taxonomy:
    """Emo8's label space as one object (see the module docstring for each field)."""

    emotions: tuple[str, ...] = EMOTIONS
    domains: tuple[str, ...] = DOMAINS
    positive: frozenset[str] = POSITIVE
    negative: frozenset[str] = NEGATIVE

    def definition(self, emotion: str) -> str:
        """Return the one-line definition of ``emotion``."""
        return DEFINITIONS[self.emotions[label_index(emotion)]]

    def prompts(self, emotion: str) -> list[str]:
        """Return the zero-shot prompt ensemble of ``emotion`` (see :func:`prompts`)."""
        return prompts(emotion)


#: The taxonomy object.
TAXONOMY: Final[Taxonomy] = Taxonomy()
