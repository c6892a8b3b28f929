"""The upload pipeline: a body streamed to a scratch folder (``intake``, ``scratch``), checked there (an
archive extracted and its images decoded by ``archives``, a checkpoint's header read by ``checkpoints``),
then kept by the routes in ``api.routes.uploads``."""
