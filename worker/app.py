"""The Celery application. Start one worker per GPU::

    celery -A worker.app worker --pool=solo --concurrency=1 --prefetch-multiplier=1

Late acks with prefetch 1: a worker takes a job only when it is free, and a message is acknowledged
only after its job is done. Recovery from a dead worker does not rely on the broker's redelivery,
though: leases in the database (see ``reaper``) bring the job back within ``lease_seconds``, and the
reaper also re-sends queued jobs whose message never reached, or was lost by, the broker.
"""

from __future__ import annotations

from celery import signals

from store.queue import make_client
from store.settings import get_settings

from .shutdown import SHUTTING_DOWN

settings = get_settings()
app = make_client(settings.resolved_broker_url, include=["worker.tasks"])
app.set_current()
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_concurrency=1,
    worker_pool="solo",
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,  # a broker restart must not end the worker
    worker_hijack_root_logger=False,
)


@signals.worker_shutting_down.connect
def _stop_running_job(**_kwargs) -> None:
    """A warm shutdown would wait for the job to finish; instead the job stops at its next check and
    goes back to the queue, to resume from its checkpoint on the next worker."""
    from .reaper import forget_beat

    SHUTTING_DOWN.set()
    forget_beat(settings)


@signals.worker_ready.connect
def _start_housekeeping(**_kwargs) -> None:
    """Lease reaping and the webhook sender, each on its own thread: the sender polls more often, and a
    slow receiver must not delay reaping."""
    from .reaper import start_reaper
    from .webhooks import start_sender

    start_reaper(settings, app)
    start_sender(settings)
