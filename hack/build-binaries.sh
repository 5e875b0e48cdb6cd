#!/usr/bin/env bash
# Build (or reuse) the real control-plane binaries from Go modules with the ordinary `go` tool.
#
# Everything lands in $LEPTON_CACHE/bin/<name>-<version>/<name> (default ~/.cache/lepton), outside the
# clone, so a fresh clone reuses what an earlier one built. A binary is built only when missing; each is
# written to a temporary name first and renamed into place, so an interrupted build leaves nothing half
# made behind. Prints one progress line per binary and a timing line at the end.
#
# Usage: hack/build-binaries.sh [--print-env]
#   --print-env  print shell assignments LEPTON_BIN_<NAME>=path for every binary (after building)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/versions.env
source "$here/versions.env"

cache=${LEPTON_CACHE:-$HOME/.cache/lepton}
bin_root="$cache/bin"
work_root="$cache/build"
mkdir -p "$bin_root" "$work_root"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
log() { printf '[lepton-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

path_of() { # name version -> final path
  printf '%s/%s-%s/%s' "$bin_root" "$1" "$2" "$1"
}

need() { # name version -> true when the binary is missing
  [[ ! -x "$(path_of "$1" "$2")" ]]
}

install_built() { # name version built-file
  local dest; dest=$(path_of "$1" "$2")
  mkdir -p "$(dirname "$dest")"
  mv -f "$3" "$dest.tmp.$$" && mv -f "$dest.tmp.$$" "$dest"
  log "ready: $1 $2 -> $dest"
}

# A wrapper module for a Go module whose go.mod replaces its sibling modules with local paths
# (k8s.io/kubernetes, go.etcd.io/etcd/server/v3): require the module, and replace every sibling it
# requires at a local path with the published version given. The sibling list is read from the
# downloaded go.mod, never hand-copied.
make_wrapper() { # dir module version sibling-version
  local dir=$1 mod=$2 ver=$3 sib=$4 gomod
  rm -rf "$dir" && mkdir -p "$dir"
  gomod=$(go mod download -json "$mod@$ver" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    printf 'module lepton.local/wrapper\n\ngo %s\n\nrequire %s %s\n\n' \
      "$(go env GOVERSION | sed 's/^go//; s/\([0-9]*\.[0-9]*\).*/\1.0/')" "$mod" "$ver"
    # Modules replaced with a local directory ("=> ./staging/..." or "=> ../api") in the upstream go.mod.
    awk '/=> *\.\.?\//{print $1}' "$gomod" | sort -u | while read -r m; do
      # Only modules that the upstream go.mod actually requires need a version.
      if grep -qE "^[[:space:]]*(require[[:space:]]+)?$m[[:space:]]+v" "$gomod"; then
        printf 'replace %s => %s %s\n' "$m" "$m" "$sib"
      fi
    done
  } >"$dir/go.mod"
  (cd "$dir" && go mod tidy -e >/dev/null 2>&1 || true)
  # tidy drops requirements nothing imports yet: callers `go get` the packages back at their version.
}

build_kubernetes() {
  local names=(kube-apiserver kube-controller-manager kube-scheduler kubectl) missing=() n
  for n in "${names[@]}"; do need "$n" "$KUBERNETES_VERSION" && missing+=("$n"); done
  ((${#missing[@]})) || { log "cached: kubernetes $KUBERNETES_VERSION"; return; }
  local dir="$work_root/kubernetes-$KUBERNETES_VERSION" v=${KUBERNETES_VERSION#v}
  local major=${v%%.*} minor; minor=${v#*.}; minor=${minor%%.*}
  local staging="v0.${v#*.}"
  log "building ${missing[*]} $KUBERNETES_VERSION (staging modules at $staging); tens of minutes cold"
  make_wrapper "$dir" k8s.io/kubernetes "$KUBERNETES_VERSION" "$staging"
  local pkgs=() ld="-s -w" p
  for n in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$n"); done
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.gitCommit=0000000000000000000000000000000000000000"
    ld+=" -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  (
    cd "$dir"
    go get "k8s.io/kubernetes@$KUBERNETES_VERSION" "${pkgs[@]/%/@$KUBERNETES_VERSION}" >/dev/null
    mkdir -p out
    go build -trimpath -ldflags "$ld" -o out/ "${pkgs[@]}"
  )
  for n in "${missing[@]}"; do install_built "$n" "$KUBERNETES_VERSION" "$dir/out/$n"; done
}

# SeaweedFS's `weed`: a real S3-compatible store (Apache-2.0) for the data workload's S3 source tests.
# Its releases are not tagged as module versions: the pseudo-version in versions.env names one commit.
build_weed() {
  need weed "$SEAWEEDFS_VERSION" || { log "cached: weed $SEAWEEDFS_VERSION"; return; }
  local dir="$work_root/seaweedfs-$SEAWEEDFS_VERSION"
  log "building weed $SEAWEEDFS_VERSION (SeaweedFS, for the S3 source tests); minutes cold"
  rm -rf "$dir" && mkdir -p "$dir"
  (
    cd "$dir"
    printf 'module lepton.local/weed\n\ngo %s\n' "$(go env GOVERSION | sed 's/^go//; s/\([0-9]*\.[0-9]*\).*/\1.0/')" >go.mod
    go get "github.com/seaweedfs/seaweedfs/weed@$SEAWEEDFS_VERSION" >/dev/null
    go build -trimpath -ldflags "-s -w" -o out/weed github.com/seaweedfs/seaweedfs/weed
  )
  install_built weed "$SEAWEEDFS_VERSION" "$dir/out/weed"
}

build_etcd() {
  need etcd "$ETCD_VERSION" || { log "cached: etcd $ETCD_VERSION"; return; }
  local dir="$work_root/etcd-$ETCD_VERSION"
  log "building etcd $ETCD_VERSION"
  make_wrapper "$dir" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$ETCD_VERSION"
  (
    cd "$dir"
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
    go build -trimpath -ldflags "-s -w" -o out/etcd go.etcd.io/etcd/server/v3
  )
  install_built etcd "$ETCD_VERSION" "$dir/out/etcd"
}

# lepton-health (hack/health/): Argo CD's Lua health checks under gopher-lua and kstatus
# (sigs.k8s.io/cli-utils), for the tests of what GitOps tools read. Its version is a hash of its
# sources, so an edit builds it again.
health_version() {
  cat "$here/health/go.mod" "$here/health/go.sum" "$here/health/main.go" | sha256sum | cut -c1-12
}

build_health() {
  local v; v=$(health_version)
  need lepton-health "$v" || { log "cached: lepton-health $v"; return; }
  log "building lepton-health $v (gopher-lua, kstatus)"
  local dir="$work_root/lepton-health-$v"
  rm -rf "$dir" && mkdir -p "$dir" && cp "$here/health/go.mod" "$here/health/go.sum" "$here/health/main.go" "$dir/"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o out/lepton-health .)
  install_built lepton-health "$v" "$dir/out/lepton-health"
}

# Prometheus and promtool from Debian's package: downloaded and unpacked into the cache, never installed
# (its maintainer scripts would start a server). A pinned version the mirror no longer serves falls back
# to the one it does, said in the log.
fetch_prometheus() {
  local v=$PROMETHEUS_DEB_VERSION
  if ! need promtool "$v" && ! need prometheus "$v"; then log "cached: prometheus $v"; return; fi
  log "fetching prometheus $v (Debian package)"
  local dir="$work_root/prometheus-deb-$v"
  rm -rf "$dir" && mkdir -p "$dir"
  (
    cd "$dir"
    apt-get download "prometheus=$v" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 || true; apt-get download "prometheus=$v" >/dev/null 2>&1; } \
      || { log "prometheus $v is not served; taking the version the mirror has"; apt-get download prometheus >/dev/null 2>&1; }
    dpkg-deb -x prometheus_*.deb unpacked
  )
  install_built promtool "$v" "$dir/unpacked/usr/bin/promtool"
  install_built prometheus "$v" "$dir/unpacked/usr/bin/prometheus"
  rm -rf "$dir"
}

build_go_install() { # name version package ldflags
  need "$1" "$2" || { log "cached: $1 $2"; return; }
  log "building $1 $2"
  local gobin="$work_root/gobin-$1-$2"
  rm -rf "$gobin" && mkdir -p "$gobin"
  GOBIN="$gobin" go install -trimpath -ldflags "-s -w $4" "$3@$2"
  install_built "$1" "$2" "$gobin/$1"
}

# kwok 0.8 ships no default Stages in its binaries: its stock ones live in the module under
# kustomize/stage/. Keep the ones the dev cluster uses beside the kwok binary.
copy_kwok_stages() {
  local dest; dest="$(dirname "$(path_of kwok "$KWOK_VERSION")")/stages"
  [[ -f "$dest/pod-ready.yaml" ]] && return
  local dir; dir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  mkdir -p "$dest.tmp"
  cp "$dir"/kustomize/stage/node/fast/node-initialize.yaml \
     "$dir"/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
     "$dir"/kustomize/stage/pod/general/pod-*.yaml "$dest.tmp/"
  chmod -R u+w "$dest.tmp" && rm -rf "$dest" && mv "$dest.tmp" "$dest"
  log "ready: kwok stages -> $dest"
}

# The Gateway API's standard-channel CRDs, for the tests of a canary split by HTTPRoute weights.
copy_gateway_crds() {
  local dest="$bin_root/gateway-api-$GATEWAY_API_VERSION"
  [[ -f "$dest/gateway.networking.k8s.io_httproutes.yaml" ]] && return
  local dir; dir=$(go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  mkdir -p "$dest.tmp"
  cp "$dir"/config/crd/standard/gateway.networking.k8s.io_httproutes.yaml "$dest.tmp/"
  chmod -R u+w "$dest.tmp" && rm -rf "$dest" && mv "$dest.tmp" "$dest"
  log "ready: Gateway API CRDs $GATEWAY_API_VERSION -> $dest"
}

# The Prometheus Operator's ServiceMonitor and PrometheusRule CRDs, for the tests of an InferenceService's
# ServiceMonitor and of the chart's PrometheusRule.
copy_monitoring_crds() {
  local dest="$bin_root/prometheus-operator-crds-$PROMETHEUS_OPERATOR_VERSION"
  [[ -f "$dest/monitoring.coreos.com_servicemonitors.yaml" && -f "$dest/monitoring.coreos.com_prometheusrules.yaml" ]] \
    && return
  local dir; dir=$(go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
    | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  mkdir -p "$dest.tmp"
  cp "$dir"/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml \
     "$dir"/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml "$dest.tmp/"
  chmod -R u+w "$dest.tmp" && rm -rf "$dest" && mv "$dest.tmp" "$dest"
  log "ready: Prometheus Operator CRDs $PROMETHEUS_OPERATOR_VERSION -> $dest"
}

print_env() {
  local n
  for n in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    printf 'LEPTON_BIN_%s=%s\n' "$(echo "$n" | tr 'a-z-' 'A-Z_')" "$(path_of "$n" "$KUBERNETES_VERSION")"
  done
  printf 'LEPTON_BIN_ETCD=%s\n' "$(path_of etcd "$ETCD_VERSION")"
  printf 'LEPTON_BIN_KWOK=%s\n' "$(path_of kwok "$KWOK_VERSION")"
  printf 'LEPTON_BIN_KWOKCTL=%s\n' "$(path_of kwokctl "$KWOK_VERSION")"
  printf 'LEPTON_BIN_HELM=%s\n' "$(path_of helm "$HELM_VERSION")"
  printf 'LEPTON_BIN_WEED=%s\n' "$(path_of weed "$SEAWEEDFS_VERSION")"
  printf 'LEPTON_BIN_LEPTON_HEALTH=%s\n' "$(path_of lepton-health "$(health_version)")"
  printf 'LEPTON_BIN_PROMTOOL=%s\n' "$(path_of promtool "$PROMETHEUS_DEB_VERSION")"
  printf 'LEPTON_BIN_PROMETHEUS=%s\n' "$(path_of prometheus "$PROMETHEUS_DEB_VERSION")"
  printf 'LEPTON_KWOK_STAGES=%s/stages\n' "$(dirname "$(path_of kwok "$KWOK_VERSION")")"
  printf 'LEPTON_GATEWAY_API_CRDS=%s\n' "$bin_root/gateway-api-$GATEWAY_API_VERSION"
  printf 'LEPTON_MONITORING_CRDS=%s\n' "$bin_root/prometheus-operator-crds-$PROMETHEUS_OPERATOR_VERSION"
  printf 'LEPTON_KUBERNETES_VERSION=%s\n' "$KUBERNETES_VERSION"
}

start=$(date +%s)
build_go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
build_go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok \
  "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
build_go_install kwokctl "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwokctl \
  "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
build_etcd
build_kubernetes
build_weed
build_health
fetch_prometheus
copy_kwok_stages
copy_gateway_crds
copy_monitoring_crds
log "all binaries ready in $(($(date +%s) - start))s (cache: $bin_root)"
[[ "${1:-}" == "--print-env" ]] && print_env
exit 0
