"""Every setting of the service, read from the environment (prefix ``RLPRUNE_``) or a ``.env`` file."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RLPRUNE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("rlprune-data"), description="root of the embedded default's files")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite under data_dir")
    broker_url: str | None = Field(None, description="Celery broker; default: a SQLite file beside the database")
    artifact_dir: Path | None = Field(None, description="job work folders and artifacts; default: data_dir/jobs")
    dataset_dir: Path | None = Field(None, description="where a relative dataset.root points")
    upload_dir: Path | None = Field(None, description="tenants' uploaded datasets and checkpoints; default: "
                                                       "data_dir/uploads")
    # Object storage: with a bucket, API and workers share no disk (see store.objects).
    storage_url: str | None = Field(None, pattern=r"^s3://", description="s3://bucket/prefix: artifacts and uploads "
                                    "go there; default: the local folders above")
    s3_endpoint_url: str | None = Field(None, description="an S3-compatible server's URL; default: AWS S3")
    s3_region: str | None = Field(None, description="the bucket's region; default: boto3's own lookup")
    s3_access_key_id: str | None = Field(None, description="default: boto3's lookup (AWS_* variables, roles)")
    s3_secret_access_key: SecretStr | None = Field(None, description="default: boto3's lookup")
    lease_seconds: float = Field(60.0, gt=0, description="a running job's lease; renewed by heartbeats")
    heartbeat_seconds: float = Field(10.0, gt=0, description="how often a worker renews its lease")
    max_attempts: int = Field(3, ge=1, description="runs of a job (first run and resumptions) before it fails")
    progress_interval_seconds: float = Field(1.0, ge=0, description="minimum time between progress writes")
    max_body_bytes: int = Field(1 << 20, ge=1, description="request bodies above this are refused with 413")

    # The API process. Each request holds at most one connection at a time and only while it reads or
    # writes, so a pool smaller than the thread pool queues requests instead of deadlocking them.
    db_pool_size: int = Field(10, ge=1, description="database connections per API or worker process")
    db_pool_timeout_seconds: float = Field(5.0, gt=0, description="wait for a connection before answering 503")
    job_cache_entries: int = Field(4096, ge=0, description="GET /jobs/{id} bodies kept per API process; 0: none")
    job_cache_seconds: float = Field(5.0, gt=0, description="the longest a cached job body is served before a re-read")
    max_streams_per_tenant: int = Field(8, ge=1, description="open event streams per tenant and API process")
    metrics_token: str | None = Field(None, description="when set, /metrics needs 'Authorization: Bearer <it>'")

    # What one tenant may ask for; refused with 422 (one job) or 429 (too many jobs).
    max_unfinished_jobs: int = Field(20, ge=1, description="queued + running jobs per tenant")
    max_dataset_bytes: int = Field(4 << 30, ge=1, description="memory a job's dataset may take as tensors")
    max_epochs: int = Field(500, ge=0, description="pretrain.epochs and finetune.epochs, each")
    max_search_steps: int = Field(2000, ge=1, description="prune.steps")
    max_samples_per_step: int = Field(256, ge=2, description="prune.samples_per_step")
    max_latency_batch_size: int = Field(256, ge=1, description="prune.budget.target.batch_size")
    max_event_rows: int = Field(5000, ge=100, description="per job; progress events past it are not stored")
    dataset_downloads: bool = Field(False, description="let a spec's dataset.download fetch CIFAR into "
                                    "data_dir/cache/downloads (shared by every tenant); false: refused with 422")
    worker_memory_bytes: int = Field(default_factory=lambda: physical_memory(), ge=1,
                                     description="what one job may take on a worker: its dataset and its model's "
                                     "training (422 beyond); default: this machine's memory")
    max_job_seconds: int = Field(48 * 3600, ge=1, description="the longest a job may run (its time_limit_seconds "
                                 "defaults to this and may not exceed it); past it, the job fails with time_limit")
    artifact_quota_bytes: int = Field(50 << 30, ge=1, description="stored artifact bytes per tenant, over its "
                                      "finished jobs; a tenant past it cannot submit (507) until it deletes some")

    # Uploads (POST /datasets, /checkpoints). The archive caps are the zip and tar bomb defence: they count
    # the bytes actually written while extracting, never the sizes an archive declares.
    max_upload_bytes: int = Field(1 << 30, ge=1, description="one upload's body (413 beyond)")
    max_extracted_bytes: int = Field(4 << 30, ge=1, description="a dataset archive's files once extracted (413)")
    max_archive_files: int = Field(100_000, ge=1, description="members of one dataset archive (422 beyond)")
    max_archive_member_bytes: int = Field(64 << 20, ge=1, description="one file of a dataset archive (413)")
    upload_quota_bytes: int = Field(10 << 30, ge=1, description="stored upload bytes per tenant (507 beyond), "
                                    "counted while an upload is written")
    max_uploads_per_tenant: int = Field(2, ge=1, description="uploads in progress per tenant and API process (429)")
    upload_threads: int = Field(4, ge=1, description="threads per API process that extract and keep uploads, apart "
                                "from the request threads")
    upload_check_processes: int = Field(2, ge=1, description="processes per API process that decode uploaded "
                                        "images and parse checkpoint headers")
    upload_check_memory_bytes: int = Field(2 << 30, ge=64 << 20, description="address space of each of those "
                                           "processes: a check that needs more refuses its upload")
    max_image_pixels: int = Field(50_000_000, ge=1, description="pixels of one uploaded image (422 beyond)")
    max_archive_pixels: int = Field(4_000_000_000, ge=1, description="pixels of all a dataset archive's images "
                                    "(413 beyond)")
    key_threads: int = Field(4, ge=1, description="threads per API process that look API keys up (apart from the "
                             "request threads)")

    # Workers.
    worker_stale_seconds: float = Field(30.0, gt=0, description="/readyz needs a worker beat this recent")
    ready_needs_worker: bool = Field(True, description="/readyz is 503 while no worker has beaten recently")
    redispatch_seconds: float = Field(600.0, gt=0, description="re-send a queued job's message after this long")

    # Webhooks. Receivers on private networks are refused unless the operator allows them (a test rig, or
    # a service whose receivers live beside it): otherwise a tenant could make workers call internal hosts.
    max_webhooks_per_tenant: int = Field(20, ge=1, description="webhook endpoints per tenant (429 beyond)")
    webhook_allow_private: bool = Field(False, description="allow receivers on loopback/private/reserved addresses")
    webhook_timeout_seconds: float = Field(5.0, gt=0, description="one delivery attempt's wall-clock time limit, "
                                           "however slowly its receiver answers")
    webhook_senders: int = Field(4, ge=1, description="messages each worker sends at once")
    webhook_senders_per_tenant: int = Field(1, ge=1, description="one tenant's messages being sent at once, over "
                                            "all workers: a tenant's slow receiver cannot hold up the others")
    webhook_max_attempts: int = Field(5, ge=1, description="attempts per message before it is recorded failed")
    webhook_backoff_seconds: float = Field(1.0, gt=0, description="first retry delay; doubled each time, plus jitter")
    webhook_poll_seconds: float = Field(1.0, gt=0, description="how often each worker looks for messages to send")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'rlprune.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        """Celery's SQLAlchemy transport needs no broker server; a file of its own keeps its tables out of
        the schema Alembic owns."""
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def resolved_artifact_dir(self) -> Path:
        return self.artifact_dir or self.data_dir / "jobs"

    @property
    def resolved_dataset_dir(self) -> Path:
        return self.dataset_dir or self.data_dir / "datasets"

    @property
    def resolved_upload_dir(self) -> Path:
        return self.upload_dir or self.data_dir / "uploads"

    def job_dir(self, job_id: str) -> Path:
        """A job's work folder: its checkpoints while it runs, its artifacts once it has succeeded."""
        return self.resolved_artifact_dir / job_id

    @property
    def cache_dir(self) -> Path:
        """What jobs on this machine share: latency tables, copies of bucket objects."""
        return self.data_dir / "cache"

    @property
    def downloads_dir(self) -> Path | None:
        """Where CIFAR is downloaded when a spec asks, if the operator allows it; named by the operator."""
        return self.cache_dir / "downloads" if self.dataset_downloads else None

    @property
    def objects_cache_dir(self) -> Path:
        """This worker's copies of other jobs' artifacts from the bucket."""
        return self.cache_dir / "objects"


def physical_memory() -> int:
    """The machine's memory in bytes (POSIX); 16 GiB where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


@lru_cache
def get_settings() -> Settings:
    return Settings()
