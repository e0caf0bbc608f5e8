#!/usr/bin/env bash
# Installs what building and testing need, once; every later run is a no-op.
# Debian packages (Postgres 15 server + headers, clang for bindgen), Node for
# the conformance suite, cargo-pgrx pinned to the pgrx version we build with.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

need_pkgs=()
for pkg in postgresql-15 postgresql-server-dev-15 libclang-dev clang curl python3; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
[ "$(id -u)" != 0 ] || dpkg -s sudo >/dev/null 2>&1 || need_pkgs+=(sudo)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "apt-get install ${need_pkgs[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# Node.js and npm run the official conformance suite (tests/conformance).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    log "apt-get install nodejs npm"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
    log "cargo install cargo-pgrx $PGRX_VERSION"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

if ! grep -q "pg15" "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null; then
    log "cargo pgrx init --pg15 $PG_CONFIG"
    cargo pgrx init --pg15 "$PG_CONFIG" >/dev/null
fi
