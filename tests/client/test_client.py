"""The Python client and ``rlprune jobs``, against a real ``rlprune serve`` (API and worker processes)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime

import httpx
import pytest

from api.app import create_app
from rlprune_client import (
    FINISHED,
    ApiError,
    Checkpoint,
    Client,
    Dataset,
    Delivery,
    Event,
    Job,
    Webhook,
    WebhookCreated,
    WebhookTest,
)
from rlprune_client.cli import StageBars
from store.models import FINISHED as SERVER_FINISHED
from store.settings import Settings

from ..support.jobs import all_events
from ..support.paths import REPO
from ..support.serving import start_serve, stop_serve
from ..support.specs import tiny_spec
from ..support.uploads import image_folder, zipped

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    # receivers on loopback allowed: the webhook commands register one that nothing answers
    process, http = start_serve(tmp_path_factory.mktemp("client") / "data", RLPRUNE_WEBHOOK_ALLOW_PRIVATE="true")
    try:
        yield str(http.base_url), http.headers["Authorization"].removeprefix("Bearer "), http
    finally:
        assert stop_serve(process) == 0


def rlprune(*args: str, key: str | None, url: str, cwd=REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RLPRUNE_API_KEY", "RLPRUNE_URL")}
    env |= {"RLPRUNE_URL": url, **({"RLPRUNE_API_KEY": key} if key else {})}
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_client_needs_neither_torch_nor_the_server():
    code = ("import sys, rlprune_client, rlprune_client.cli; "
            "print(sorted({'torch', 'fastapi', 'sqlalchemy', 'celery'} & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_the_client_s_models_are_the_api_s_schemas(tmp_path):
    schemas = create_app(Settings(data_dir=tmp_path)).openapi()["components"]["schemas"]
    for model, schema in ((Job, "JobOut"), (Dataset, "DatasetOut"), (Checkpoint, "CheckpointOut"),
                          (Webhook, "WebhookOut"), (WebhookCreated, "WebhookCreated"), (Delivery, "DeliveryOut"),
                          (WebhookTest, "WebhookTestOut")):
        assert set(model.model_fields) == set(schemas[schema]["properties"])
    assert {str(s) for s in SERVER_FINISHED} == FINISHED


def test_submit_wait_and_download_from_the_command_line(serve, tmp_path):
    url, key, _ = serve
    spec = tmp_path / "spec.yaml"
    tiny = tiny_spec(pretrain={"epochs": 1}, export={"formats": ["safetensors", "onnx"]})
    spec.write_text(json.dumps(tiny.model_dump(mode="json")))
    submitted = rlprune("jobs", "submit", str(spec), "--wait", key=key, url=url)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.splitlines()[0]
    assert "finetuned" in submitted.stdout and "accuracy" in submitted.stdout  # the summary table

    downloaded = rlprune("jobs", "download", job_id, "--out", str(tmp_path / "out"), key=key, url=url)
    assert downloaded.returncode == 0, downloaded.stderr
    with Client(url, key) as client:
        artifacts = client.artifacts(job_id)
    assert sorted(p.rsplit("/", 1)[1] for p in downloaded.stdout.split()) == sorted(a.name for a in artifacts)
    for artifact in artifacts:
        assert hashlib.sha256((tmp_path / "out" / artifact.name).read_bytes()).hexdigest() == artifact.sha256

    listed = rlprune("jobs", "list", "--status", "succeeded", key=key, url=url)
    assert listed.returncode == 0 and job_id[:8] in listed.stdout
    named = rlprune("jobs", "list", "--name", tiny.name.upper(), key=key, url=url)
    assert named.returncode == 0 and job_id in named.stdout
    assert rlprune("jobs", "list", "--name", "no job is called this", key=key, url=url).stdout.strip() == ""
    shown = rlprune("jobs", "show", job_id, key=key, url=url)
    assert json.loads(shown.stdout)["status"] == "succeeded"
    assert rlprune("jobs", "delete", job_id, key=key, url=url).returncode == 0
    gone = rlprune("jobs", "show", job_id, key=key, url=url)
    assert gone.returncode == 1 and gone.stderr.strip() == "rlprune: error: 404 Not Found: no such job"


def test_uploads_and_webhooks_from_the_command_line(serve, tmp_path):
    url, key, _ = serve
    archive, checkpoint, text = tmp_path / "pets.zip", tmp_path / "net.safetensors", tmp_path / "notes.txt"
    archive.write_bytes(zipped(image_folder()))
    header = b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'
    checkpoint.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    text.write_text("not an archive")

    def ok(*args: str) -> str:
        done = rlprune(*args, key=key, url=url)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    dataset = ok("datasets", "upload", str(archive))
    assert ok("datasets", "list").split("\t")[:2] == [dataset, "cat, dog"]  # piped: tab-separated rows
    weights = ok("checkpoints", "upload", str(checkpoint))
    assert ok("checkpoints", "list").split("\t")[:2] == [weights, "1"]
    wrong = rlprune("datasets", "upload", str(text), key=key, url=url)
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == "rlprune: error: notes.txt is not a zip, tar or tar.gz archive"
    refused = rlprune("checkpoints", "upload", str(text), key=key, url=url)
    assert refused.returncode == 1 and "safetensors" in refused.stderr and len(refused.stderr.splitlines()) == 1
    ok("datasets", "delete", dataset)
    ok("checkpoints", "delete", weights)
    assert ok("datasets", "list") == ok("checkpoints", "list") == ""

    webhook, secret = ok("webhooks", "add", "http://127.0.0.1:9/hook", "--events", "job.succeeded").split("\t")
    assert secret.startswith("whsec_")
    assert ok("webhooks", "list").split("\t")[:3] == [webhook, "http://127.0.0.1:9/hook", "job.succeeded"]
    assert ok("webhooks", "deliveries", webhook) == ""
    assert ok("webhooks", "test", webhook).startswith("msg_")
    busy = rlprune("webhooks", "test", webhook, key=key, url=url)  # nothing answers at :9, so it is retried
    assert busy.returncode == 1 and busy.stderr.strip() == (
        "rlprune: error: 409 Conflict: this webhook's test event is still waiting to be sent")
    bad = rlprune("webhooks", "add", "ftp://example.com/", key=key, url=url)
    assert bad.returncode == 1 and "url" in bad.stderr and len(bad.stderr.splitlines()) == 1
    ok("webhooks", "delete", webhook)
    assert ok("webhooks", "list") == ""
    assert rlprune("webhooks", "delete", webhook, key=key, url=url).returncode == 1


def test_the_command_line_names_its_version():
    done = subprocess.run([sys.executable, "-m", "service.cli", "--version"], cwd=REPO, capture_output=True,
                          text=True, check=True)
    assert re.fullmatch(r"rlprune \d+\.\d+\.\d+\S*", done.stdout.strip())


def test_the_command_line_fails_with_one_readable_line(serve, tmp_path):
    url, key, _ = serve
    missing = rlprune("jobs", "show", "00000000-0000-0000-0000-000000000000", key=key, url=url)
    assert missing.returncode == 1 and missing.stderr.strip() == "rlprune: error: 404 Not Found: no such job"
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"name": "x", "model": {"arch": "no-such-net"}, "dataset": {"name": "digits"}}))
    refused = rlprune("jobs", "submit", str(invalid), key=key, url=url)
    assert refused.returncode == 1 and "model.arch" in refused.stderr and len(refused.stderr.splitlines()) == 1
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nmodel:\n  arch: vgg11\n   width: 1\n")
    unparsable = rlprune("jobs", "submit", str(broken), key=key, url=url)
    assert unparsable.returncode == 2 and "is not JSON or YAML at line 4, column 9" in unparsable.stderr
    unreadable = rlprune("jobs", "submit", str(tmp_path / "absent.json"), key=key, url=url)
    assert unreadable.returncode == 2 and len(unreadable.stderr.splitlines()) == 1
    keyless = rlprune("jobs", "list", key=None, url=url)
    assert keyless.returncode == 2 and "RLPRUNE_API_KEY" in keyless.stderr
    wrong = rlprune("jobs", "list", key="not-a-key", url=url)
    assert wrong.returncode == 1 and wrong.stderr.startswith("rlprune: error: 401")
    down = rlprune("jobs", "list", key=key, url="http://127.0.0.1:9")
    assert down.returncode == 1 and "Unreachable" in down.stderr


def test_the_client_follows_a_job_and_resumes_downloads(serve, tmp_path):
    url, key, http = serve
    spec = tiny_spec(pretrain={"epochs": 1}).model_dump(mode="json")
    with Client(url, key) as client:
        job = client.submit(spec, idempotency_key="client-test")
        assert client.submit(spec, idempotency_key="client-test").id == job.id
        seen = []
        done = client.wait(job.id, on_event=seen.append)
        assert done.status == "succeeded" and done.finished
        assert [e.id for e in seen] == [e["id"] for e in all_events(http, job.id)]
        assert [e.id for e in client.events(job.id, after=seen[2].id)] == [e.id for e in seen[3:]]
        assert job.id in [j.id for j in client.list("succeeded", page_size=1)]  # follows the cursor pages

        model = next(a for a in client.artifacts(job.id) if a.name == "model.safetensors")
        whole = http.get(f"/jobs/{job.id}/artifacts/{model.name}").content
        partial = f".model.safetensors.{model.sha256[:16]}.part"
        (tmp_path / partial).write_bytes(whole[: model.bytes // 2])  # an interrupted download
        (tmp_path / ".model.safetensors.0000000000000000.part").write_bytes(b"y" * 9)  # another file's: left alone
        [path] = client.download(job.id, model.name, tmp_path)
        assert path.read_bytes() == whole and not (tmp_path / partial).exists()

        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / partial).write_bytes(b"x" * (model.bytes // 2))  # not its first half
        with pytest.raises(ApiError, match="SHA-256"):
            client.download(job.id, model.name, tmp_path / "bad")
        assert not (tmp_path / "bad" / partial).exists()

        with pytest.raises(ApiError) as refused:
            client.submit({**spec, "model": {"arch": "vgg11", "width": 7}})
        assert refused.value.status == 422 and refused.value.problem["errors"][0]["field"] == "model.width"
        with pytest.raises(ApiError) as finished:
            client.cancel(job.id)
        assert finished.value.status == 409
        client.delete(job.id)
        with pytest.raises(ApiError) as gone:
            client.get(job.id)
        assert gone.value.status == 404 and gone.value.problem["title"] == "Not Found"


EVENT_END = re.compile(rb"\r?\n\r?\n")  # a blank line ends a server-sent event


class CuttingProxy:
    """A loopback TCP proxy to the API that cuts the first event stream right after its first event, as a
    dropped connection would; every other connection is passed through whole."""

    def __init__(self, upstream: str):
        self.upstream = httpx.URL(upstream)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.streams = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection((self.upstream.host, self.upstream.port))

        def forward_requests() -> None:
            with contextlib.suppress(OSError):
                while chunk := client.recv(65536):
                    upstream.sendall(chunk)

        threading.Thread(target=forward_requests, daemon=True).start()
        seen, counted = b"", False
        with client, upstream, contextlib.suppress(OSError):
            while chunk := upstream.recv(65536):
                sent, seen = len(seen), seen + chunk
                event_end = EVENT_END.search(seen, seen.find(b"data:")) if b"data:" in seen else None
                if not counted and b"text/event-stream" in seen and event_end:
                    counted, self.streams = True, self.streams + 1
                    if self.streams == 1:  # up to the end of the first event, then the line goes dead
                        client.sendall(seen[sent:event_end.end()])
                        client.shutdown(socket.SHUT_RDWR)  # close() alone would wait for the reading thread
                        upstream.shutdown(socket.SHUT_RDWR)
                        return
                client.sendall(chunk)

    def close(self) -> None:
        self.listener.close()


def test_a_dropped_event_stream_resumes_without_losing_or_repeating_events(serve):
    url, key, http = serve
    with Client(url, key) as client:
        job = client.submit(tiny_spec(pretrain={"epochs": 1}).model_dump(mode="json"))
        done = client.wait(job.id)
    assert done.finished
    proxy = CuttingProxy(url)
    try:
        with Client(proxy.url, key) as through_proxy:
            ids = [event.id for event in through_proxy.events(job.id)]
    finally:
        proxy.close()
    assert proxy.streams >= 2, "the stream should have been cut and opened again"
    assert ids == [e["id"] for e in all_events(http, job.id)]


def test_an_unreachable_api_is_an_api_error():
    with Client("http://127.0.0.1:9", "key", timeout=2) as client, pytest.raises(ApiError) as error:
        client.get("00000000-0000-0000-0000-000000000000")
    assert error.value.status is None and isinstance(error.value.__cause__, httpx.TransportError)


@pytest.mark.parametrize("name", ["", ".", "..", "../evil", "a/b", "a\\b"])
def test_an_artifact_name_that_could_leave_the_folder_is_never_written(tmp_path, name):
    """The API lists names; a client writes files. A name that is empty, a dot path or a path is refused."""
    listing = [{"name": name, "bytes": 1, "sha256": "0" * 64, "media_type": "application/octet-stream"}]

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=listing) if request.url.path.endswith("/artifacts") else \
            httpx.Response(200, content=b"x")

    client = Client("http://127.0.0.1:9", "rlp_x", transport=httpx.MockTransport(answer))
    with pytest.raises(ApiError, match=r"Unsafe artifact name|no artifact"):
        client.download("job", "all", tmp_path / "out")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_each_network_a_stage_trains_gets_its_own_bar():
    """The finetune bar never runs backwards when a finalist's or a baseline's finetune starts."""
    def event(i: int, kind: str, stage: str, **data) -> Event:
        return Event(id=i, at=datetime.now(UTC), type=kind, stage=stage, message=kind, data=data)

    bars = StageBars()
    with bars:
        for i, (kind, stage, data) in enumerate([
                ("stage", "finetune", {}), ("epoch", "finetune", {"run": "model", "epoch": 2, "epochs": 2}),
                ("epoch", "finetune", {"run": "baseline l1", "epoch": 1, "epochs": 4}),
                ("epoch", "finetune", {"run": "model", "epoch": 2, "epochs": 2})]):
            bars.show(event(i, kind, stage, **data))
    shown = [(t.fields["label"], t.completed) for t in bars.progress.tasks]
    assert shown == [("finetune", 1.0), ("finetune · baseline l1", 1.0), ("finetune", 1.0)]
