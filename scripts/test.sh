#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, then checks
# formatting, lints and runs every test. Integration tests start their own redis-server
# processes on free ports; nothing here uses a Redis on 6379. tests/readme.rs runs the README's
# example apps with node and php (PHP's built-in server).
set -euo pipefail
cd "$(dirname "$0")/.."

# Installs the Debian package $2 when command $1 is missing (as root, with apt-get), or stops
# with a message that says what to install.
need() {
  local command="$1" package="$2" why="$3"
  command -v "$command" >/dev/null 2>&1 && return 0
  echo "$command not found ($why): installing it (apt-get install -y $package)"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    if [ -z "${APT_UPDATED:-}" ]; then
      apt-get update -qq
      APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null
  fi
  if ! command -v "$command" >/dev/null 2>&1; then
    echo "error: the tests need $command ($why); install it (e.g. 'sudo apt-get install -y $package') and run again" >&2
    exit 1
  fi
}

need redis-server redis-server "the integration tests start their own Redis servers"
need redis-cli redis-server "the integration tests start their own Redis servers"
need php php-cli "tests/readme.rs runs the README's PHP example"
need node nodejs "tests/readme.rs runs the README's Node example"
command -v cargo >/dev/null 2>&1 || { echo "error: cargo not found: install Rust (rustup)" >&2; exit 1; }

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
cargo test --doc --locked
# Broken intra-doc links (the module docs are the map of the code) fail the run too.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --document-private-items --locked
