#!/usr/bin/env bash
# Build the container image and check that it serves: /ready, then one greedy /predict.
#   scripts/container-smoke.sh            # docker where an engine runs; otherwise buildah + podman
# Without a registry (this project's machines), the base image is bootstrapped locally with debootstrap
# (Debian bookworm + python3), and pip inside the build uses the host network, CA bundle and any local wheels
# in $WHEELS (default /opt/wheels, where the CPU build of torch lies here).
set -euo pipefail
cd "$(dirname "$0")/.."
image=${IMAGE:-localhost/rnnlm:smoke}
port=${PORT:-18437}
wheels=${WHEELS:-/opt/wheels}
say() { printf '== %s\n' "$*"; }

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    say "docker engine found: docker build"
    docker build -t "$image" .
    cid=$(docker run -d -p "127.0.0.1:${port}:8000" "$image")
    stop() { docker stop -t 15 "$cid" >/dev/null; docker rm "$cid" >/dev/null; }
    logs() { docker logs "$cid" 2>&1 | tail -20; }
else
    base=${BASE_IMAGE:-localhost/rnnlm-base:bookworm}
    for tool in buildah podman debootstrap; do
        command -v "$tool" >/dev/null || { echo "no docker engine and no $tool: apt-get install buildah podman debootstrap" >&2; exit 2; }
    done
    if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
        say "bootstrapping the base image $base (Debian bookworm minbase + python3)"
        rootfs=$(mktemp -d)
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
            "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$base" >/dev/null
        rm -rf "$rootfs"
    fi
    say "buildah bud (isolation chroot) FROM $base"
    extra=()
    if [ -d "$wheels" ]; then
        extra+=(--volume "$wheels:/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels --build-arg TORCH_INDEX_URL=https://pypi.org/simple)
    fi
    buildah bud --isolation=chroot --network=host --layers=false \
        --volume /etc/ssl/certs:/etc/ssl/certs:ro "${extra[@]}" \
        --build-arg BASE_IMAGE="$base" -t "$image" . >/tmp/rnnlm-container-build.log 2>&1 \
        || { tail -30 /tmp/rnnlm-container-build.log; exit 1; }
    # Run the image's CMD in a working container. `buildah run --isolation=chroot` works in sandboxes where
    # podman cannot set rlimits or cgroups; the image's ENV, USER and WORKDIR apply either way.
    ctr=$(buildah from "$image")
    runlog=$(mktemp)
    setsid buildah run --isolation=chroot --network=host --env RNNLM_PORT="$port" --env RNNLM_HOST=127.0.0.1 \
        "$ctr" -- rnnlm-serve >"$runlog" 2>&1 &
    runner=$!
    stop() { kill -TERM -- "-$runner" 2>/dev/null || true; wait "$runner" 2>/dev/null || true; buildah rm "$ctr" >/dev/null; }
    logs() { tail -20 "$runlog"; }
fi
trap 'stop' EXIT

say "image size: $( (docker image ls --format '{{.Size}}' "$image" 2>/dev/null || podman image ls --format '{{.Size}}' "$image") | head -1)"
say "waiting for http://127.0.0.1:${port}/ready"
for _ in $(seq 120); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${port}/ready', timeout=2)" 2>/dev/null; then
        break
    fi
    sleep 0.5
done
python3 - "$port" <<'PY' || { logs; exit 1; }
import json, sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
print("ready:", urllib.request.urlopen(base + "/ready", timeout=5).read().decode())
request = urllib.request.Request(base + "/predict", data=json.dumps({"prefix": "ROMEO:\n", "num_tokens": 60}).encode(),
                                 headers={"Content-Type": "application/json"})
body = json.load(urllib.request.urlopen(request, timeout=30))
assert body["num_tokens"] == 60 and body["finish_reason"] == "length", body
print("predict:", json.dumps(body))
info = json.load(urllib.request.urlopen(base + "/info", timeout=5))
print("serving:", info["weights"], info["config"], "limits:", info["limits"])
PY
say "container smoke test passed"
