#!/usr/bin/env bash
# Smoke test of a built image without a container runtime (no podman here): mounts the image with
# `buildah mount` and runs it as a runtime would — in its own network namespace, as the image's
# USER, with the image's ENTRYPOINT, CMD and ENV and its built-in config unchanged except the
# brokers, the root filesystem read-only, a fresh directory owned by that user as the volume — next
# to a Tansu broker on the namespace's loopback. Then: /healthz, /readyz, a POST that Kafka
# acknowledges and the image's own `eventpipe tail` finds, the spool in the volume, and a clean exit
# on SIGTERM.
#   deploy/container/smoke-test.sh [TAG]      (default localhost/eventpipe:latest; run as root)
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG=${1:-localhost/eventpipe:latest}
die() { echo "deploy/container/smoke-test.sh: FAIL: $*" >&2; exit 1; }
if [[ -z ${SMOKE_TEST_NS:-} ]]; then
  for tool in unshare chroot ip curl python3 buildah; do
    command -v "$tool" >/dev/null || die "$tool is missing: apt-get install -y util-linux coreutils iproute2 curl python3 buildah (or run scripts/setup.sh)"
  done
  # A private network (the image's own ports 8080/9100 and Kafka on 9092, no clash with the host)
  # and private mounts.
  exec env SMOKE_TEST_NS=1 unshare --net --mount --propagation private "$0" "$@"
fi
ip link set lo up
B=(buildah --storage-driver "${BUILDAH_STORAGE_DRIVER:-vfs}")
TANSU=${TANSU_BIN:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}
[[ -x $TANSU ]] || die "Tansu is missing: cargo install tansu --version 0.6.0 --locked --features dynostore,libsql (or run scripts/setup.sh)"

work=$(mktemp -d)
ctr="" gw="" broker=""
cleanup() {
  set +e
  [[ -n $gw ]] && kill -KILL "$gw" 2>/dev/null
  [[ -n $broker ]] && kill -KILL "$broker" 2>/dev/null && wait "$broker" 2>/dev/null
  umount -R "$work/root" 2>/dev/null
  if [[ -n $ctr ]]; then "${B[@]}" umount "$ctr" >/dev/null 2>&1; "${B[@]}" rm "$ctr" >/dev/null 2>&1; fi
  rm -rf "$work"
}
trap cleanup EXIT
show_logs() {
  echo "--- gateway log" >&2; tail -n 30 "$work/gateway.log" >&2 2>/dev/null || true
  echo "--- tansu log" >&2; tail -n 10 "$work/tansu.log" >&2 2>/dev/null || true
}
fail() { show_logs; die "$*"; }

ctr=$("${B[@]}" from --pull=never --quiet "$TAG") || die "no image $TAG: run deploy/container/build.sh"
mnt=$("${B[@]}" mount "$ctr")
# The image's own settings: USER, ENTRYPOINT + CMD, ENV.
eval "$("${B[@]}" inspect --type image "$TAG" | python3 -c '
import json, shlex, sys
c = json.load(sys.stdin)["OCIv1"]["config"]
q = lambda xs: "(" + " ".join(shlex.quote(x) for x in xs) + ")"
print("image_user=" + shlex.quote(c.get("User", "")))
print("image_cmd=" + q((c.get("Entrypoint") or []) + (c.get("Cmd") or [])))
print("image_env=" + q(c.get("Env") or []))
print("image_volumes=" + q(sorted(c.get("Volumes") or {})))
')"
[[ -n $image_user && ${image_user%%:*} != 0 && ${image_user%%:*} != root ]] || die "the image runs as root (USER '$image_user')"
[[ ${image_volumes[*]} == /var/lib/eventpipe ]] || die "the image's volumes are '${image_volumes[*]}', not /var/lib/eventpipe"

# 1. The binary runs on the image's libraries alone.
version=$(chroot "$mnt" /usr/local/bin/eventpipe --version) || die "the binary does not run in the image"
[[ $version == "eventpipe "* ]] || die "unexpected --version output: $version"

# 2. Root filesystem read-only; the volume writable by the image's user only; /proc, /dev, /tmp.
mkdir -p "$work/root" "$work/volume"
chown "$image_user" "$work/volume" && chmod 0700 "$work/volume"
mount --bind "$mnt" "$work/root" && mount -o remount,bind,ro "$work/root"
mount --bind "$work/volume" "$work/root/var/lib/eventpipe"
mount -t proc proc "$work/root/proc"
mount --rbind /dev "$work/root/dev"
mount -t tmpfs -o mode=1777 tmpfs "$work/root/tmp"
chroot=$(command -v chroot)
in_image() { env -i "${image_env[@]}" "$chroot" --userspec="$image_user" "$work/root" "$@"; }

# 3. Kafka (Tansu, memory engine) on this namespace's loopback, and the topics for the image's schemas.
(cd "$work" && exec "$TANSU" broker --listener-url tcp://127.0.0.1:9092 \
  --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/ >tansu.log 2>&1) &
broker=$!
for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break; sleep 0.1; done
(exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null || fail "Tansu did not listen on 127.0.0.1:9092"
in_image /usr/local/bin/eventpipe topics create --brokers 127.0.0.1:9092 \
  --schemas /etc/eventpipe/schemas --partitions 1 >/dev/null 2>"$work/topics.log" \
  || { cat "$work/topics.log" >&2; fail "topics create failed in the image"; }

# 4. The gateway exactly as the image starts it (built-in config), brokers set the documented way.
(exec env -i "${image_env[@]}" EVENTPIPE_KAFKA__BROKERS=127.0.0.1:9092 \
  "$chroot" --userspec="$image_user" "$work/root" "${image_cmd[@]}") >"$work/gateway.log" 2>&1 &
gw=$!
wait_for() { # URL: until it answers 200, up to 60 s
  for _ in $(seq 1 300); do
    kill -0 "$gw" 2>/dev/null || fail "the gateway exited at start-up"
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$1") == 200 ]] && return 0
    sleep 0.2
  done
  fail "$1 did not answer 200 within 60 s"
}
wait_for http://127.0.0.1:9100/healthz
wait_for http://127.0.0.1:9100/readyz

# 5. An event in, acknowledged (200 Kafka, or 202 spooled and replayed), and found in its topic.
id=0f8fad5b-d9cb-469f-a165-70867728950e
body='{"context":{"visitor_id":"smoke"},"events":[{"schema":"page_view/1","event_id":"'$id'","data":{"url":"https://example.com/smoke"}}]}'
accepted=""
for _ in $(seq 1 30); do # a topic created a moment ago may still be unknown to the producer
  answer=$(curl -s -w ' %{http_code}' -H 'content-type: application/json' -d "$body" http://127.0.0.1:8080/v1/events) || true
  if [[ $answer == *'"accepted":1'*' 20'[02] ]]; then accepted=$answer; break; fi
  sleep 1
done
[[ -n $accepted ]] || fail "POST /v1/events was not accepted: $answer"
found=$(in_image /usr/local/bin/eventpipe tail --brokers 127.0.0.1:9092 --topic events.page_view \
  --from-beginning --count 1 --idle-timeout-ms 60000 2>/dev/null) || true
[[ $found == *"$id"* ]] || fail "the acknowledged event is not in events.page_view: '$found'"

# 6. The spool lives in the volume, written by the image's user.
[[ -d $work/volume/spool && $(stat -c %u "$work/volume/spool") == "${image_user%%:*}" ]] \
  || fail "no spool directory owned by ${image_user%%:*} in the volume"

# 7. SIGTERM: graceful shutdown, exit 0.
kill -TERM "$gw"
for _ in $(seq 1 600); do kill -0 "$gw" 2>/dev/null || break; sleep 0.1; done
kill -0 "$gw" 2>/dev/null && fail "the gateway did not exit within 60 s of SIGTERM"
status=0; wait "$gw" || status=$?
gw=""
[[ $status == 0 ]] || fail "the gateway exited $status after SIGTERM"
echo "container smoke test: ok ($version as $image_user, read-only root, answer ${accepted##* }, event found in Kafka, clean SIGTERM)"
