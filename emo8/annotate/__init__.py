"""Annotation rounds in Label Studio: serve, push, pull, import, status, aggregate (see docs/annotate.md).

Modules: :mod:`~emo8.annotate.server` (install/start/stop a local server, tokens), :mod:`~emo8.annotate.client`
(SDK wrapper with retries), :mod:`~emo8.annotate.rounds` (push/pull/import/status), :mod:`~emo8.annotate.aggregate`
(majority / Dawid-Skene, agreement statistics, annotator quality), :mod:`~emo8.annotate.store` (catalog tables),
:mod:`~emo8.annotate.export` (reading tasks and export files), :mod:`~emo8.annotate.labelconfig` (the label config).
Nothing heavy is imported here.
"""
