"""The job store shared by the API and the workers: settings, SQLAlchemy models and sessions.

It imports neither torch nor FastAPI nor Celery, so every process of the service can use it.
"""
