"""The Emo8 label config (``annotations/emo8.xml``) and guidelines (``annotations/guidelines.md``).

The XML's choice *aliases* are the canonical codes that land in annotation results: the 8 emotions of
:data:`emo8.core.taxonomy.EMOTIONS`, :data:`NONE` for "none / unclear", the :data:`FLAGS` and the styles of
:data:`emo8.core.taxonomy.DOMAINS`. :class:`LabelConfig` reads the XML once and maps whatever a result
carries (an alias, or a display value from an older config, in any case) back to those codes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emo8.annotate.errors import LabelConfigError
from emo8.core.taxonomy import DOMAINS, EMOTIONS

#: Name of the image object tag and of the three control tags in the label config.
IMAGE_NAME = "image"
EMOTION_CONTROL = "emotion"
FLAGS_CONTROL = "flags"
STYLE_CONTROL = "style"

#: The "none / unclear" answer of the emotion control.
NONE = "none"
#: The flag codes, in display order.
FLAGS: tuple[str, ...] = ("broken", "inappropriate", "text_only")
#: The categories of the emotion control: the 8 emotions in taxonomy order, then :data:`NONE`.
CATEGORIES: tuple[str, ...] = (*EMOTIONS, NONE)

_ANNOTATIONS_DIR = Path(__file__).resolve().parents[2] / "annotations"
DEFAULT_LABEL_CONFIG = _ANNOTATIONS_DIR / "emo8.xml"
DEFAULT_GUIDELINES = _ANNOTATIONS_DIR / "guidelines.md"


@dataclass(frozen=True)
class Answer:
    """One annotation result reduced to emo8's codes.

    ``choice`` is an emotion, :data:`NONE`, or ``None`` when the result has no emotion (a skipped task, an empty
    annotation); ``flags`` are :data:`FLAGS` codes; ``unknown`` lists result values the config does not know.
    """

    choice: str | None
    flags: tuple[str, ...] = ()
    style: str | None = None
    unknown: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelConfig:
    """A parsed label config: its XML text and, per control, the map ``lower(value or alias) -> code``.

    Build one with :meth:`load` (a file) or :meth:`from_xml` (text).
    """

    xml: str
    codes: Mapping[str, Mapping[str, str]] = field(repr=False)

    @classmethod
    def load(cls, path: str | Path | None = None) -> LabelConfig:
        """Read and check the label config at ``path`` (default: the repository's ``annotations/emo8.xml``)."""
        target = Path(path) if path is not None else DEFAULT_LABEL_CONFIG
        try:
            text = target.read_text(encoding="utf-8")
        except OSError as exc:
            raise LabelConfigError(
                f"cannot read the label config {target}: {exc}; pass --label-config PATH "
                "(the repository ships annotations/emo8.xml)"
            ) from exc
        return cls.from_xml(text, str(target))

    @classmethod
    def from_xml(cls, text: str, name: str = "<label config>") -> LabelConfig:
        """Parse ``text``; raise :class:`LabelConfigError` unless it has the controls and all 8 emotions."""
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise LabelConfigError(f"{name} is not valid XML: {exc}") from exc
        images = [el for el in root.iter("Image") if el.get("name") == IMAGE_NAME]
        if not images or images[0].get("value") != "$image":
            raise LabelConfigError(f'{name} needs <Image name="{IMAGE_NAME}" value="$image"/>')
        codes: dict[str, dict[str, str]] = {}
        for control in root.iter("Choices"):
            control_name = control.get("name") or ""
            mapping: dict[str, str] = {}
            for choice in control.iter("Choice"):
                value = choice.get("value") or ""
                code = choice.get("alias") or value
                mapping[value.strip().lower()] = code
                mapping[code.strip().lower()] = code
            codes[control_name] = mapping
        emotion_codes = set(codes.get(EMOTION_CONTROL, {}).values())
        missing = [e for e in CATEGORIES if e not in emotion_codes]
        if missing:
            raise LabelConfigError(
                f'{name}: the <Choices name="{EMOTION_CONTROL}"> control must offer every emotion and '
                f"'{NONE}' as choice aliases; missing: {', '.join(missing)}"
            )
        unknown = sorted(emotion_codes - set(CATEGORIES))
        if unknown:
            raise LabelConfigError(f"{name}: unknown emotion choices {unknown}; expected {list(CATEGORIES)}")
        for control_name, allowed in ((FLAGS_CONTROL, FLAGS), (STYLE_CONTROL, DOMAINS)):
            extra = sorted(set(codes.get(control_name, {}).values()) - set(allowed))
            if extra:
                raise LabelConfigError(
                    f"{name}: unknown {control_name} choices {extra}; expected {list(allowed)}"
                )
        return cls(xml=text, codes=codes)

    def emotion_value(self, label: str) -> str:
        """Return the result value that selects ``label`` (an emotion or :data:`NONE`) in this config."""
        return self.codes[EMOTION_CONTROL][label]

    def parse_result(self, result: Iterable[Mapping[str, Any]]) -> Answer:
        """Reduce a Label Studio annotation ``result`` list to an :class:`Answer`."""
        choice: str | None = None
        flags: list[str] = []
        style: str | None = None
        unknown: list[str] = []
        for region in result:
            control = str(region.get("from_name", ""))
            value = region.get("value") or {}
            raw = value.get("choices") if isinstance(value, Mapping) else None
            if not isinstance(raw, list):
                continue
            mapping = self.codes.get(control)
            if mapping is None:
                continue
            for item in raw:
                code = mapping.get(str(item).strip().lower())
                if code is None:
                    unknown.append(f"{control}:{item}")
                elif control == EMOTION_CONTROL:
                    choice = code
                elif control == FLAGS_CONTROL:
                    flags.append(code)
                elif control == STYLE_CONTROL:
                    style = code
        ordered = tuple(f for f in FLAGS if f in flags)
        return Answer(choice=choice, flags=ordered, style=style, unknown=tuple(unknown))

    def choice_result(self, label: str) -> list[dict[str, Any]]:
        """Return the ``result`` list that selects ``label`` (predictions, tests and benchmarks use it)."""
        return [
            {
                "from_name": EMOTION_CONTROL,
                "to_name": IMAGE_NAME,
                "type": "choices",
                "value": {"choices": [self.emotion_value(label)]},
            }
        ]


def guidelines_html(path: str | Path | None = None) -> str:
    """Render the guidelines markdown at ``path`` (default ``annotations/guidelines.md``) to HTML.

    The HTML becomes the project's instructions (``expert_instruction``), shown before annotating.
    """
    from markdown_it import MarkdownIt

    target = Path(path) if path is not None else DEFAULT_GUIDELINES
    try:
        text = target.read_text(encoding="utf-8")
    except OSError as exc:
        raise LabelConfigError(f"cannot read the guidelines {target}: {exc}; pass --guidelines PATH") from exc
    return str(MarkdownIt("commonmark").render(text))
