"""Every stage a pipeline can name: importing the stage modules fills :data:`emo8.core.stage.STAGES`."""

from __future__ import annotations

import importlib
from typing import Any

from emo8.core.stage import STAGES, Stage

__all__ = ["STAGE_MODULES", "load_stages"]

#: The modules that register stages, in pipeline order (``uniemox.stage``: the model's pretraining and
#: evaluation stages, when the ``uniemox`` package is installed).
STAGE_MODULES = (
    "emo8.ingest.stage",
    "emo8.embed.stage",
    "emo8.dedup.stage",
    "emo8.label.stage",
    "emo8.annotate.stage",
    "emo8.release.stage",
    "emo8.pipeline.demo",
    "uniemox.stage",
)


def load_stages() -> dict[str, Stage[Any, Any]]:
    """Import every stage module that exists and return :data:`STAGES` (a missing module is skipped; an
    error inside one that exists propagates)."""
    for module in STAGE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
                raise

    def rank(stage: Stage[Any, Any]) -> int:  # pipeline order, whatever imported the modules first
        module = getattr(stage.run, "__module__", "")
        return STAGE_MODULES.index(module) if module in STAGE_MODULES else len(STAGE_MODULES)

    ordered = sorted(STAGES.values(), key=rank)  # stable: registration order within a module
    STAGES.clear()
    STAGES.update((stage.name, stage) for stage in ordered)
    return STAGES
