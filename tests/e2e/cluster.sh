#!/usr/bin/env bash
# A throwaway Kubernetes control plane on 127.0.0.1 for vramfit's end-to-end test: etcd and
# kube-apiserver only (no kubelet, no controller-manager), a self-signed CA, one static admin
# token (system:masters) and RBAC.
#
#   tests/e2e/cluster.sh up     # start; writes $E2E_STATE/kubeconfig, prints nothing else on success
#   tests/e2e/cluster.sh down   # stop every process whose pid file is in $E2E_STATE/run
#
# Environment:
#   E2E_STATE        state directory (certificates, etcd data, logs, pid files)   [required]
#   K8S_BIN          directory holding kube-apiserver                              [/opt/k8s/bin]
#   ETCD             etcd binary                                 [etcd on PATH, else $K8S_BIN/etcd]
#   ETCD_PORT, ETCD_PEER_PORT, APISERVER_PORT                   [23790, 23800, 6443]
# Processes started elsewhere (kube-scheduler, vramfit) may write their pid to
# $E2E_STATE/run/NAME.pid so that `down` stops them too.
set -euo pipefail

: "${E2E_STATE:?E2E_STATE must name a state directory}"
K8S_BIN=${K8S_BIN:-/opt/k8s/bin}
ETCD=${ETCD:-$(command -v etcd || echo "$K8S_BIN/etcd")}
ETCD_PORT=${ETCD_PORT:-23790}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-23800}
APISERVER_PORT=${APISERVER_PORT:-6443}
RUN=$E2E_STATE/run
LOGS=$E2E_STATE/logs
PKI=$E2E_STATE/pki

running() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

stop() {
  local pidfile=$1 pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 0
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

down() {
  [ -d "$RUN" ] || return 0
  for f in "$RUN"/*.pid; do
    [ -e "$f" ] || continue
    case $(basename "$f") in etcd.pid | kube-apiserver.pid) ;; *) stop "$f" ;; esac
  done
  stop "$RUN/kube-apiserver.pid"
  stop "$RUN/etcd.pid"
}

up() {
  for tool in "$ETCD" "$K8S_BIN/kube-apiserver" openssl curl; do
    command -v "$tool" >/dev/null || { echo "cluster.sh: $tool not found" >&2; exit 1; }
  done
  mkdir -p "$RUN" "$LOGS" "$PKI"
  (
    cd "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=vramfit-e2e-ca" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
      -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile server.ext -out server.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    echo "$(openssl rand -hex 20),e2e-admin,e2e-admin,system:masters" > tokens.csv
  )
  local token
  token=$(cut -d, -f1 "$PKI/tokens.csv")

  setsid "$ETCD" --name e2e --data-dir "$E2E_STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
    > "$LOGS/etcd.log" 2>&1 < /dev/null &
  echo $! > "$RUN/etcd.pid"
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$ETCD_PORT/health" >/dev/null 2>&1 && break
    running etcd || { echo "cluster.sh: etcd exited:" >&2; tail -20 "$LOGS/etcd.log" >&2; exit 1; }
    sleep 0.25
  done

  # No ServiceAccount admission (nothing creates the default ServiceAccounts) and no endpoint
  # reconciler (it would publish 127.0.0.1 as the kubernetes Service's endpoint).
  setsid "$K8S_BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
    --tls-cert-file "$PKI/server.crt" --tls-private-key-file "$PKI/server.key" \
    --client-ca-file "$PKI/ca.crt" --token-auth-file "$PKI/tokens.csv" \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --endpoint-reconciler-type none \
    --disable-admission-plugins ServiceAccount \
    --profiling=false --cert-dir "$PKI" \
    > "$LOGS/kube-apiserver.log" 2>&1 < /dev/null &
  echo $! > "$RUN/kube-apiserver.pid"

  cat > "$E2E_STATE/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 < "$PKI/ca.crt")
users:
- name: e2e-admin
  user:
    token: $token
contexts:
- name: e2e
  context: {cluster: e2e, user: e2e-admin}
current-context: e2e
KUBECONFIG
  chmod 600 "$E2E_STATE/kubeconfig"

  for _ in $(seq 1 480); do
    if curl -sf --cacert "$PKI/ca.crt" -H "Authorization: Bearer $token" \
        "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null 2>&1; then
      return 0
    fi
    running kube-apiserver || break
    sleep 0.25
  done
  echo "cluster.sh: kube-apiserver not ready:" >&2
  tail -30 "$LOGS/kube-apiserver.log" >&2
  exit 1
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) echo "usage: cluster.sh up|down" >&2; exit 2 ;;
esac
