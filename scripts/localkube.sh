#!/usr/bin/env bash
# The local Kubernetes control plane of real components, on loopback only:
#   etcd                     http://127.0.0.1:$SNAPSTAGE_KUBE_ETCD_PORT (5120; peer 5121)
#   kube-apiserver           https://127.0.0.1:$SNAPSTAGE_KUBE_API_PORT (5122): token authentication
#                            (one user per function), RBAC authorization, PodSecurity admission
#   kube-controller-manager  namespaces, garbage collection, PV/PVC binding, workloads, Jobs (5123)
#   kube-scheduler           (5124)
#   kwok                     nodes and pods: scheduled pods become Ready, Job pods complete (5125)
#   snapshot-controller      VolumeSnapshot / VolumeGroupSnapshot CRDs and their controller
#   csi-hostpath             snapstage's host-path CSI driver (tools/kube/csi-hostpath) on a unix
#                            socket, behind the real csi-provisioner and csi-snapshotter sidecars;
#                            volumes are directories under $SNAPSTAGE_KUBE_CSI_ROOT/volumes/
# All of them are built from Go modules pinned in tools/kube/go.mod (k8s.io/kubernetes v1.37.2,
# external-snapshotter v8.7.0, external-provisioner v6.4.0, kwok v0.8.0, etcd v3.7.0) into
# .tools/localkube-<key>/, once; later runs reuse them.
#
# Usage: scripts/localkube.sh build|start|stop|status|env
#   env prints the variables tests read: SNAPSTAGE_KUBECONFIG (cluster admin) and
#   SNAPSTAGE_KUBECONFIG_<FUNCTION> (that function's own user, bound by infra/k8s/rbac.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN=$ROOT/.run/kube
MOD=$ROOT/tools/kube
ETCD_PORT=${SNAPSTAGE_KUBE_ETCD_PORT:-5120}
ETCD_PEER_PORT=$((ETCD_PORT + 1))
API_PORT=${SNAPSTAGE_KUBE_API_PORT:-5122}
KCM_PORT=$((API_PORT + 1))
SCHED_PORT=$((API_PORT + 2))
KWOK_PORT=$((API_PORT + 3))
API=https://127.0.0.1:$API_PORT
PROGRAMS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok snapshot-controller csi-snapshotter csi-provisioner)
# The services, in start order (stop goes backwards).
SERVICES=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok snapshot-controller csi-hostpath csi-provisioner csi-snapshotter)
# Function users: name -> RBAC group (infra/k8s/rbac.yaml). "rehydrate" is replicate-artifacts-back's
# array-mode rehydration of the on-prem Nexus (its namespace: nexus).
FUNCTIONS=(deploy-staging-db snapshot-production restore-to-staging rehydrate)

# The upstream programs are keyed by the module pins; the driver is ours and rebuilt on every
# start (a no-op for Go's build cache when its source is unchanged).
key() { cat "$MOD/go.mod" "$MOD/go.sum" "$MOD"/etcd/*.go | sha256sum | cut -c1-12; }
K8S_VERSION=$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$MOD/go.mod")
BIN=$ROOT/.tools/localkube-$K8S_VERSION-$(key)

log() { echo "localkube: $*" >&2; }

build() {
  command -v go >/dev/null || { log "go is required to build the control plane (Go ≥ 1.26: https://go.dev/doc/install)"; exit 1; }
  local missing=()
  for p in "${PROGRAMS[@]}"; do [ -x "$BIN/$p" ] || missing+=("$p"); done
  if [ "${#missing[@]}" != 0 ]; then build_upstream "${missing[@]}"; fi
  mkdir -p "$BIN"
  (cd "$MOD" && go build -trimpath -o "$BIN/csi-hostpath" ./csi-hostpath)
  data
}

# Data the services read, from the same modules: the snapshot CRDs, and KWOK's stages (nodes
# initialised and kept alive with a Lease, as a kubelet does, so the node-lifecycle controller never
# marks them NotReady; pods Ready; Job pods completed; deleted pods removed).
data() {
  local snapclient kwokdir
  snapclient=$(cd "$MOD" && go list -m -f '{{.Dir}}' github.com/kubernetes-csi/external-snapshotter/client/v8)
  kwokdir=$(cd "$MOD" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  mkdir -p "$BIN/crds"
  cp "$snapclient"/config/crd/*storage.k8s.io_*.yaml "$BIN/crds/"
  chmod -R u+w "$BIN/crds"
  { for f in "$kwokdir"/kustomize/stage/node/fast/node-initialize.yaml \
      "$kwokdir"/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
      "$kwokdir"/kustomize/stage/pod/fast/pod-*.yaml; do
      echo "---"; cat "$f"; done; } >"$BIN/kwok-stages.yaml"
}

build_upstream() {
  local missing=("$@")
  log "building ${missing[*]} into ${BIN#"$ROOT"/} (once; measured 22 min on 2 shared cores cold, ~1 min with a warm Go build cache)"
  local start=$SECONDS pkgs=()
  for p in "${missing[@]}"; do
    case "$p" in
      etcd) pkgs+=(./etcd) ;;
      kube-*|kubectl) pkgs+=("k8s.io/kubernetes/cmd/$p") ;;
      kwok) pkgs+=(sigs.k8s.io/kwok/cmd/kwok) ;;
      snapshot-controller|csi-snapshotter) pkgs+=("github.com/kubernetes-csi/external-snapshotter/v8/cmd/$p") ;;
      csi-provisioner) pkgs+=(github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner) ;;
    esac
  done
  mkdir -p "$BIN.partial"
  # One go build per program, so progress shows; the packages they share compile once (Go's build
  # cache), which is also why a new clone with a warm cache only links.
  (cd "$MOD" && go mod download && for pkg in "${pkgs[@]}"; do
    t=$SECONDS
    go build -trimpath -ldflags="-s -w" -o "$BIN.partial/" "$pkg"
    log "  built $(basename "$pkg") in $((SECONDS - t)) s"
  done)
  chmod -R u+w "$BIN.partial"
  mkdir -p "$BIN" && cp -a "$BIN.partial/." "$BIN/" && rm -rf "$BIN.partial"
  log "built in $((SECONDS - start)) s"
}

pki() {
  # Made once per set of users: a checkout that adds a function user makes it anew.
  [ -f "$RUN/pki/.done" ] && [ "$(cat "$RUN/pki/.done")" = "${FUNCTIONS[*]}" ] && return 0
  rm -rf "$RUN/pki"
  mkdir -p "$RUN/pki" && cd "$RUN/pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -keyout ca.key -out ca.crt -subj "/CN=snapstage-local-ca" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' >apiserver.ext
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -out apiserver.crt -extfile apiserver.ext 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  # Tokens: token,user,uid,"groups"
  {
    echo "$(token),snapstage-admin,uid-admin,\"system:masters\""
    echo "$(token),system:kube-controller-manager,uid-kcm"
    echo "$(token),system:kube-scheduler,uid-scheduler"
    for f in "${FUNCTIONS[@]}"; do echo "$(token),snapstage-$f,uid-$f,\"snapstage:$f\""; done
  } >tokens.csv
  echo "${FUNCTIONS[*]}" >.done
  cd "$ROOT"
}

token() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }

kubeconfig() { # user file
  local tok
  tok=$(awk -F, -v u="$1" '$2 == u {print $1}' "$RUN/pki/tokens.csv")
  cat >"$2" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: snapstage-local
  cluster:
    server: $API
    certificate-authority-data: $(base64 -w0 "$RUN/pki/ca.crt")
users:
- name: $1
  user:
    token: $tok
contexts:
- name: $1@snapstage-local
  context: {cluster: snapstage-local, user: $1}
current-context: $1@snapstage-local
EOF
}

running() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

launch() { # name args...
  local name=$1; shift
  if running "$name"; then return 0; fi
  "$BIN/$name" "$@" >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

# wait_for NAME SECONDS CMD...: until CMD succeeds, the service is gone, or the time is up.
wait_for() {
  local name=$1 limit=$2; shift 2
  local end=$((SECONDS + limit))
  while ! "$@" >/dev/null 2>&1; do
    if ! running "$name"; then log "$name exited; see ${RUN#"$ROOT"/}/$name.log:"; tail -20 "$RUN/$name.log" >&2; return 1; fi
    if [ "$SECONDS" -ge "$end" ]; then log "$name not ready within $limit s; see ${RUN#"$ROOT"/}/$name.log"; return 1; fi
    sleep 0.3
  done
}

kubectl() { "$BIN/kubectl" --kubeconfig "$RUN/admin.kubeconfig" "$@"; }

start() {
  build
  mkdir -p "$RUN"
  pki
  kubeconfig snapstage-admin "$RUN/admin.kubeconfig"
  kubeconfig system:kube-controller-manager "$RUN/kcm.kubeconfig"
  kubeconfig system:kube-scheduler "$RUN/scheduler.kubeconfig"
  for f in "${FUNCTIONS[@]}"; do kubeconfig "snapstage-$f" "$RUN/$f.kubeconfig"; done

  launch etcd --name local --data-dir "$RUN/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "local=http://127.0.0.1:$ETCD_PEER_PORT" --quota-backend-bytes 1073741824 \
    --unsafe-no-fsync
  wait_for etcd 30 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

  launch kube-apiserver --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --tls-cert-file "$RUN/pki/apiserver.crt" --tls-private-key-file "$RUN/pki/apiserver.key" \
    --client-ca-file "$RUN/pki/ca.crt" --token-auth-file "$RUN/pki/tokens.csv" --anonymous-auth=false \
    --authorization-mode RBAC --enable-admission-plugins NodeRestriction,PodSecurity \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$RUN/pki/sa.pub" --service-account-signing-key-file "$RUN/pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --endpoint-reconciler-type none \
    --enable-priority-and-fairness=false --profiling=false --cert-dir "$RUN/pki"
  local admin_token
  admin_token=$(awk -F, '$2 == "snapstage-admin" {print $1}' "$RUN/pki/tokens.csv")
  wait_for kube-apiserver 120 curl -fsS --cacert "$RUN/pki/ca.crt" -H "Authorization: Bearer $admin_token" "$API/readyz"

  kubectl apply --server-side --field-manager snapstage-localkube -f "$BIN/crds/" >/dev/null
  kubectl wait --for condition=Established --timeout 60s crd --all >/dev/null

  launch kube-controller-manager --kubeconfig "$RUN/kcm.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
    --service-account-private-key-file "$RUN/pki/sa.key" --root-ca-file "$RUN/pki/ca.crt" \
    --use-service-account-credentials=true --cluster-name snapstage-local --profiling=false \
    --concurrent-gc-syncs 2
  launch kube-scheduler --kubeconfig "$RUN/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false --profiling=false
  launch kwok --kubeconfig "$RUN/admin.kubeconfig" --config "$BIN/kwok-stages.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --cidr 10.244.0.0/16 --node-ip 10.244.0.1 --server-address "127.0.0.1:$KWOK_PORT" \
    --node-lease-duration-seconds 40
  launch snapshot-controller --kubeconfig "$RUN/admin.kubeconfig" --leader-election=false

  # Storage: the driver, the sidecars, and the classes (tools/kube/manifests/storage.yaml).
  mkdir -p "$RUN/csi/data"
  launch csi-hostpath --endpoint "unix://$RUN/csi/csi.sock" --root "$RUN/csi/data" --node-id kwok-node-0
  wait_for csi-hostpath 30 test -S "$RUN/csi/csi.sock"
  launch csi-provisioner --csi-address "$RUN/csi/csi.sock" --kubeconfig "$RUN/admin.kubeconfig" \
    --leader-election=false --timeout 5m
  launch csi-snapshotter --csi-address "$RUN/csi/csi.sock" --kubeconfig "$RUN/admin.kubeconfig" \
    --leader-election=false --timeout 5m
  kubectl apply --server-side --field-manager snapstage-localkube -f "$MOD/manifests/storage.yaml" >/dev/null

  # One node: KWOK keeps it Ready and runs what is scheduled on it.
  kubectl apply --server-side --field-manager snapstage-localkube -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations: {kwok.x-k8s.io/node: fake}
  labels: {type: kwok, kubernetes.io/hostname: kwok-node-0, kubernetes.io/os: linux, kubernetes.io/arch: amd64,
           topology.kubernetes.io/zone: us-east-1a, topology.ebs.csi.aws.com/zone: us-east-1a}
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
EOF
  wait_for kwok 60 kubectl wait --for condition=Ready --timeout 2s node/kwok-node-0

  # What a platform admin sets up with plain RBAC (no namespace wildcards, unlike an EKS access
  # policy scoped to snapstage-*): the production namespace labelled as such, the staging namespace
  # made for snapstage (its RoleBindings need it to exist), the on-prem Nexus's namespace (rehydrate's
# RoleBinding), and infra/k8s/rbac.yaml exactly as shipped.
  kubectl apply --server-side --field-manager snapstage-localkube -f - >/dev/null <<'EOF'
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: prod, labels: {env: production}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: snapstage-staging, labels: {app.kubernetes.io/managed-by: snapstage}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: nexus}}
EOF
  kubectl apply --server-side --field-manager snapstage-localkube -f "$ROOT/infra/k8s/rbac.yaml" >/dev/null
  # deploy-staging-db makes a namespace per run (snapstage-<hash>): on EKS its access policy is
  # scoped to the namespaces snapstage-*; plain RBAC cannot say that, so here the namespaced role
  # is bound cluster-wide (the code itself still touches only what it made).
  kubectl apply --server-side --field-manager snapstage-localkube -f - >/dev/null <<'EOF'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: snapstage-deploy-staging-db-namespaced-local}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: snapstage-deploy-staging-db-namespaced}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "snapstage:deploy-staging-db"}]
EOF
  wait_for kube-controller-manager 60 kubectl get serviceaccount default -n default
  log "up: $API (admin kubeconfig ${RUN#"$ROOT"/}/admin.kubeconfig; kubectl: $BIN/kubectl)"
}

stop() {
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
    local s=${SERVICES[$i]}
    if running "$s"; then kill "$(cat "$RUN/$s.pid")" 2>/dev/null || true; fi
  done
  for s in "${SERVICES[@]}"; do
    if [ -f "$RUN/$s.pid" ]; then
      local pid; pid=$(cat "$RUN/$s.pid")
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$RUN/$s.pid"
    fi
  done
  # A fresh cluster each start: tests assume no state from an earlier run.
  rm -rf "$RUN/etcd" "$RUN/csi"
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  status) for s in "${SERVICES[@]}"; do if running "$s"; then echo "$s running"; else echo "$s stopped"; fi; done ;;
  env)
    echo "export SNAPSTAGE_KUBECONFIG=$RUN/admin.kubeconfig"
    for f in "${FUNCTIONS[@]}"; do
      v=$(echo "$f" | tr 'a-z-' 'A-Z_')
      echo "export SNAPSTAGE_KUBECONFIG_$v=$RUN/$f.kubeconfig"
    done
    echo "export SNAPSTAGE_KUBECTL=$BIN/kubectl"
    echo "export SNAPSTAGE_KUBE_CSI_ROOT=$RUN/csi/data"
    ;;
  *) echo "usage: $0 build|start|stop|status|env" >&2; exit 2 ;;
esac
