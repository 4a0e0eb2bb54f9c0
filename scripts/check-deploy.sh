#!/usr/bin/env bash
# Checks every artifact in deploy/ with the real tool, and that its config starts a gateway:
#   systemd     systemd-analyze verify on the unit (any warning fails), its stop/fd budgets, and
#               its example config loads (`eventpipe serve` until /readyz, then SIGTERM)
#   kubernetes  kubernetes-validate --strict against each version in CHECK_DEPLOY_K8S_VERSIONS (the
#               oldest supported and a recent one), the kustomization lists every manifest, the
#               termination budget, and the ConfigMap's config loads
#   haproxy     haproxy -c on deploy/haproxy/haproxy.cfg (when it exists)
#   container   cargo build --release, deploy/container/build.sh, deploy/container/smoke-test.sh
#   prometheus  promtool check rules deploy/prometheus/*.yml and promtool test rules on its
#               *.test.yml (when the directory exists)
# Usage: scripts/check-deploy.sh [CHECK...]      (default: all). Run as root (buildah, chroot).
# A missing tool fails with how to install it; nothing is skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
K8S_VERSIONS=${CHECK_DEPLOY_K8S_VERSIONS:-"1.30.0 1.34.0"}
IMAGE=${CHECK_DEPLOY_IMAGE:-localhost/eventpipe:check}
# CHECK_DEPLOY_BIN: use this binary instead of building target/release/eventpipe (quick local runs).
BIN=${CHECK_DEPLOY_BIN:-$PWD/target/release/eventpipe}

fail() { echo "check-deploy: FAIL: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || fail "$1 is not installed: $2 (scripts/setup.sh installs it)"; }
ok() { echo "check-deploy: ok: $*"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

release_binary() {
  if [[ -z ${built:-} && -z ${CHECK_DEPLOY_BIN:-} ]]; then
    need cargo "https://rustup.rs"
    nice -n 10 cargo build --release --locked --quiet --bin eventpipe
    built=1
  fi
}

# config_loads NAME FILE [VAR=value...]: `eventpipe serve --config FILE` in a private network
# namespace (the file's own listen addresses, no clash) until /readyz answers 200 on the
# admin_listen port, then SIGTERM and exit 0. Catches unknown keys, bad values, failed checks.
config_loads() {
  local name=$1 file=$2; shift 2
  need unshare "apt-get install -y util-linux"
  need ip "apt-get install -y iproute2"
  need curl "apt-get install -y curl"
  local admin
  admin=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["admin_listen"].rsplit(":", 1)[1])' "$file") \
    || fail "$name: $file has no admin_listen"
  if ! env -i PATH="$PATH" HOME="$HOME" "$@" unshare --net bash -c '
      ip link set lo up
      "$1" serve --config "$2" >"$3" 2>&1 & gw=$!
      for _ in $(seq 1 300); do
        kill -0 $gw 2>/dev/null || exit 1
        [[ $(curl -s -o /dev/null -w "%{http_code}" http://127.0.0.1:$4/readyz) == 200 ]] && break
        sleep 0.2
      done
      [[ $(curl -s -o /dev/null -w "%{http_code}" http://127.0.0.1:$4/readyz) == 200 ]] || exit 1
      kill -TERM $gw; wait $gw' _ "$BIN" "$file" "$tmp/$name.log" "$admin"; then
    grep -v "^  " "$tmp/$name.log" | tail -n 20 >&2
    fail "$name: the gateway did not start and stop cleanly with $file"
  fi
}

check_systemd() {
  need systemd-analyze "apt-get install -y systemd"
  release_binary
  local unit=deploy/systemd/eventpipe.service out
  # verify wants ExecStart's binary to exist: check a copy that points at the one just built.
  grep -q '^ExecStart=/usr/local/bin/eventpipe ' "$unit" || fail "$unit: ExecStart is not /usr/local/bin/eventpipe"
  sed "s|^ExecStart=/usr/local/bin/eventpipe |ExecStart=$BIN |" "$unit" >"$tmp/eventpipe.service"
  # It exits 0 on unknown keys and unparsable values (it only warns): any output is a failure.
  out=$(systemd-analyze verify --man=no "$tmp/eventpipe.service" 2>&1) || true
  [[ -z $out ]] || fail "systemd-analyze verify $unit:"$'\n'"$out"
  python3 - "$unit" deploy/systemd/eventpipe.toml <<'EOF' || fail "$unit: budgets"
import re, sys, tomllib
unit = dict(re.findall(r"^(\w+)=(.*)$", open(sys.argv[1]).read(), re.M))
c = tomllib.load(open(sys.argv[2], "rb"))
stop = float(unit["TimeoutStopSec"].removesuffix("s"))
need = c["shutdown_grace_secs"] + c["limits"]["request_timeout_ms"] / 1000 + 2 * c["kafka"]["ack_timeout_ms"] / 1000  # producer flush + audit flush
assert stop > need, f"TimeoutStopSec {stop} s is not above grace + drain + flushes = {need} s"
nofile = int(unit["LimitNOFILE"])
assert nofile > c["limits"]["max_connections"], f"LimitNOFILE {nofile} <= limits.max_connections"
assert unit["Environment"] and "EVENTPIPE_SPOOL__DIR=%S/" in open(sys.argv[1]).read(), "spool not in the StateDirectory"
EOF
  config_loads systemd deploy/systemd/eventpipe.toml EVENTPIPE_SPOOL__DIR="$tmp/systemd-spool" \
    EVENTPIPE_SCHEMAS="$PWD/schemas"
  ok "systemd: verify, budgets (TimeoutStopSec, LimitNOFILE), example config serves"
}

check_kubernetes() {
  need kubernetes-validate "pip install kubernetes-validate"
  local dir=deploy/kubernetes files
  mapfile -t files < <(python3 - "$dir" <<'EOF' || fail "$dir/kustomization.yaml"
import os, sys, yaml
d = sys.argv[1]
listed = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))["resources"]
present = sorted(f for f in os.listdir(d) if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml")
missing = sorted(set(present) - set(listed)) + sorted(set(listed) - set(present))
assert not missing, f"kustomization.yaml and the directory disagree on: {missing}"
print("\n".join(os.path.join(d, f) for f in listed))
EOF
  )
  # On-demand jobs (deploy/kubernetes/ops/) are validated too.
  files+=("$dir"/ops/*.yaml)
  for v in $K8S_VERSIONS; do
    kubernetes-validate --strict --quiet -k "$v" "${files[@]}" || fail "kubernetes-validate --strict -k $v"
  done
  python3 - "$dir" "$tmp/k8s.toml" <<'EOF' || fail "$dir: budgets"
import os, sys, tomllib, yaml
d = sys.argv[1]
docs = [x for f in os.listdir(d) if f.endswith(".yaml") and f != "kustomization.yaml" for x in yaml.safe_load_all(open(os.path.join(d, f)))]
sts = next(x for x in docs if x["kind"] == "StatefulSet")
cm = next(x for x in docs if x["kind"] == "ConfigMap")
open(sys.argv[2], "w").write(cm["data"]["eventpipe.toml"])
c = tomllib.loads(cm["data"]["eventpipe.toml"])
pod = sts["spec"]["template"]["spec"]
ctr = pod["containers"][0]
pre = ctr["lifecycle"]["preStop"]["sleep"]["seconds"]
need = pre + c["shutdown_grace_secs"] + c["limits"]["request_timeout_ms"] / 1000 + 2 * c["kafka"]["ack_timeout_ms"] / 1000  # producer + audit flush
grace = pod["terminationGracePeriodSeconds"]
assert grace > need, f"terminationGracePeriodSeconds {grace} is not above preStop + grace + drain + flushes = {need}"
claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
spool = next(m for m in ctr["volumeMounts"] if m["name"] in claims)
assert c["spool"]["dir"].startswith(spool["mountPath"] + "/"), "spool.dir is not on the claim"
assert not any("hostPath" in v for v in pod.get("volumes", [])), "hostPath volume"
EOF
  # The ConfigMap's config, with a throwaway certificate where the Secret would be mounted.
  need openssl "apt-get install -y openssl"
  openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=eventpipe -days 1 \
    -keyout "$tmp/tls.key" -out "$tmp/tls.crt" >/dev/null 2>&1 || fail "openssl could not make a test certificate"
  release_binary
  config_loads kubernetes "$tmp/k8s.toml" EVENTPIPE_SPOOL__DIR="$tmp/k8s-spool" \
    EVENTPIPE_SCHEMAS="$PWD/schemas" EVENTPIPE_TLS__CERT="$tmp/tls.crt" EVENTPIPE_TLS__KEY="$tmp/tls.key"
  ok "kubernetes: ${#files[@]} manifests valid (strict) for $K8S_VERSIONS, budgets, ConfigMap config serves"
}

check_haproxy() {
  local cfg=${CHECK_DEPLOY_HAPROXY_CFG:-deploy/haproxy/haproxy.cfg}
  [[ -f $cfg ]] || fail "haproxy: $cfg is missing"
  need haproxy "apt-get install -y haproxy"
  # The config reads its addresses from the environment (the fleet test sets them); any loopback
  # values do for a syntax and semantics check.
  export EVENTPIPE_LB_LISTEN=${EVENTPIPE_LB_LISTEN:-127.0.0.1:18080}
  export EVENTPIPE_LB_STATS_SOCKET=${EVENTPIPE_LB_STATS_SOCKET:-$tmp/haproxy.sock}
  local i gw adm port
  for i in 1 2 3; do
    gw=EVENTPIPE_GW$i adm=EVENTPIPE_GW${i}_ADMIN port=EVENTPIPE_GW${i}_ADMIN_PORT
    export "$gw=${!gw:-127.0.0.1:1808$i}" "$adm=${!adm:-127.0.0.1:1910$i}" "$port=${!port:-1910$i}"
  done
  local out
  out=$(haproxy -c -f "$cfg" 2>&1) || fail "haproxy -c -f $cfg:"$'\n'"$out"
  ok "haproxy: $cfg"
}

check_container() {
  need buildah "apt-get install -y buildah"
  release_binary
  IMAGE_BIN=$BIN deploy/container/build.sh "$IMAGE" || fail "deploy/container/build.sh"
  deploy/container/smoke-test.sh "$IMAGE" || fail "deploy/container/smoke-test.sh"
  ok "container: $IMAGE built and smoke-tested"
}

check_prometheus() {
  local dir=${CHECK_DEPLOY_PROMETHEUS_DIR:-deploy/prometheus}
  [[ -d $dir ]] || fail "prometheus: $dir is missing"
  need promtool "apt-get install -y prometheus"
  # Rule files are *.yml; *.test.yml are promtool unit tests of them.
  local rules=() tests=() f
  for f in "$dir"/*.yml; do
    [[ -e $f ]] || continue
    if [[ $f == *.test.yml ]]; then tests+=("$f"); else rules+=("$f"); fi
  done
  [[ ${#rules[@]} -gt 0 ]] || fail "no rule files ($dir/*.yml)"
  promtool check rules "${rules[@]}" || fail "promtool check rules ${rules[*]}"
  if [[ ${#tests[@]} -gt 0 ]]; then
    promtool test rules "${tests[@]}" || fail "promtool test rules ${tests[*]}"
  fi
  ok "prometheus: rules"
}

checks=("$@")
[[ ${#checks[@]} -gt 0 ]] || checks=(systemd kubernetes haproxy container prometheus)
for c in "${checks[@]}"; do
  case $c in
    systemd | kubernetes | haproxy | container | prometheus) "check_$c" ;;
    *) fail "unknown check '$c' (systemd kubernetes haproxy container prometheus)" ;;
  esac
done
