"""The rlprune HTTP API (FastAPI). It never imports torch: specs are validated with the torch-free model."""
