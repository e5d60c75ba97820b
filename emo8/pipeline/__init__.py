"""``emo8 build``: declarative pipelines over the stage registry, and the workspace's status.

- :mod:`emo8.pipeline.spec`: load and validate a pipeline file (every mistake with its file, line and field).
- :mod:`emo8.pipeline.registry`: import every stage module, so that :data:`emo8.core.stage.STAGES` is complete.
- :mod:`emo8.pipeline.state`: step fingerprints, workspace artifact digests, ``build/state.json``.
- :mod:`emo8.pipeline.runner`: run the steps in order, skip what is up to date, resume, wait, record each build.
- :mod:`emo8.pipeline.serve`: the loopback file servers a pipeline's ``serve:`` asks for.
- :mod:`emo8.pipeline.status`: ``emo8 status``; :mod:`emo8.pipeline.demo`: the demo's own stages.
"""
