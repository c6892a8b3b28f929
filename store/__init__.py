"""The service's shared kernel, used by the API and the workers: settings, SQLAlchemy models and sessions, one
repository module per noun (``jobs``, ``keys``, ``leases``, ``uploads``, ``webhooks``), the checks of
what a spec may name (``references``) and of webhook receivers (``receivers``), the job queue (``queue``,
Celery's client) and object storage (``objects``).

It imports neither torch nor FastAPI, so every process of the service can use it.
"""
