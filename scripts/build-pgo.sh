#!/usr/bin/env bash
# scripts/build-pgo.sh: the release binary, optimised with a profile of real requests (PGO).
#
# Usage: scripts/build-pgo.sh [--floor]
#
# `cargo build --release` lays out and inlines code by guesses; with a profile the compiler
# knows which paths the proxy really takes. On this kind of machine that takes about a fifth
# off the instructions of a proxied request (bench/profile.sh 4: 33.9k -> 26.6k) and about 5%
# off its CPU time, kernel included (bench/ab.py; README, Benchmarks). The binary behaves the
# same: only the machine code's layout and inlining differ.
#
#   1. builds session-proxy instrumented (-Cprofile-generate) into $TARGET/pgo/gen;
#   2. runs it through scripts/pgo_train.py: plain, session read, update, regenerate and
#      destroyed sessions, bad cookies, POST bodies, big and chunked responses, TLS and HTTP/2,
#      against an upstream of its own and a redis-server on a free port;
#   3. merges the profile (llvm-profdata, from rustup's llvm-tools component: the LLVM of this
#      rustc) and builds again with -Cprofile-use into $TARGET/pgo/use;
#   4. copies the binary to $TARGET/pgo/session-proxy.
#
# --floor also builds examples/bare_proxy.rs the same way (to $TARGET/pgo/bare_proxy), for
# bench/run.sh's floor. $TARGET is CARGO_TARGET_DIR, else target/. Needs redis-server and
# python3 (openssl and an HTTP/2 curl to train TLS and HTTP/2; it says when they are missing).
# Two release builds: about 6 minutes cold on 2 cores.
#
# A training run never gives the same counts twice, so the second build would start over
# every time. Instead the binaries are kept while nothing they are built from has changed
# (the sources, vendor/, Cargo.toml and Cargo.lock, these two scripts, rustc and RUSTFLAGS: the hash in
# $TARGET/pgo/inputs.sha256). PGO_REBUILD=1 builds and trains again regardless.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
PGO="$TARGET/pgo"
log() { printf '[build-pgo %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

FLOOR=0
for arg in "$@"; do
    case "$arg" in
        --floor) FLOOR=1 ;;
        *) die "unknown argument $arg (usage: scripts/build-pgo.sh [--floor])" ;;
    esac
done

command -v redis-server >/dev/null || die "redis-server is missing (apt-get install -y redis-server)"
command -v python3 >/dev/null || die "python3 is missing"

# The profile's format is LLVM's: the merge tool must be this rustc's LLVM, which rustup ships.
HOST="$(rustc -vV | sed -n 's/^host: //p')"
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata"
if [[ ! -x "$PROFDATA" ]]; then
    log "rustup component add llvm-tools (for llvm-profdata)"
    rustup component add llvm-tools >&2 || die "cannot install rustup's llvm-tools component"
    [[ -x "$PROFDATA" ]] || die "no llvm-profdata at $PROFDATA after installing llvm-tools"
fi

BINS=(--bin session-proxy)
[[ $FLOOR == 1 ]] && BINS+=(--example bare_proxy)

# Everything the binaries are built from; file names are hashed with their contents, in an
# order that does not depend on the locale.
inputs_hash() {
    (
        cd "$ROOT"
        rustc -vV
        printf 'RUSTFLAGS=%s\n' "${RUSTFLAGS:-}"
        find src examples vendor Cargo.toml Cargo.lock scripts/build-pgo.sh scripts/pgo_train.py \
            -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    ) | sha256sum | cut -d' ' -f1
}
INPUTS="$(inputs_hash)"
up_to_date() {
    [[ "${PGO_REBUILD:-}" != 1 && -x "$PGO/session-proxy" && -f "$PGO/inputs.sha256" ]] || return 1
    [[ $FLOOR == 0 || -x "$PGO/bare_proxy" ]] || return 1
    [[ "$(cat "$PGO/inputs.sha256")" == "$INPUTS" ]]
}
if up_to_date; then
    log "$PGO/session-proxy$([[ $FLOOR == 1 ]] && echo " and bare_proxy") up to date (nothing they are built from has changed; PGO_REBUILD=1 rebuilds)"
    exit 0
fi
rm -f "$PGO/inputs.sha256"
# With an explicit --target, RUSTFLAGS reach only the target's code, not build scripts and
# proc macros (which would otherwise write profiles of their own while building).
build() { # build DIR FLAG
    log "cargo build --release --locked ${BINS[*]} with $2 (target dir $1)"
    (cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} $2" cargo build --release --locked --quiet \
        --target "$HOST" --target-dir "$1" "${BINS[@]}") || die "cargo build failed"
}

rm -rf "$PGO/profiles"
mkdir -p "$PGO/profiles"
build "$PGO/gen" "-Cprofile-generate=$PGO/profiles"
GEN="$PGO/gen/$HOST/release"
train=("$GEN/session-proxy")
[[ $FLOOR == 1 ]] && train+=(--bare "$GEN/examples/bare_proxy")
log "training: scripts/pgo_train.py"
python3 "$ROOT/scripts/pgo_train.py" "${train[@]}" || die "the training run failed"
compgen -G "$PGO/profiles/*.profraw" >/dev/null || die "the training run wrote no profile"
"$PROFDATA" merge -o "$PGO/merged.profdata" "$PGO/profiles" || die "llvm-profdata merge failed"
# Cargo sees RUSTFLAGS, not the file they name: a profile under a name of its own rebuilds
# every crate with it, where one path for every profile would leave unchanged crates built
# with the previous one.
sum="$(sha256sum "$PGO/merged.profdata" | cut -c1-16)"
rm -f "$PGO"/merged-*.profdata
mv "$PGO/merged.profdata" "$PGO/merged-$sum.profdata"

build "$PGO/use" "-Cprofile-use=$PGO/merged-$sum.profdata"
cp "$PGO/use/$HOST/release/session-proxy" "$PGO/session-proxy"
[[ $FLOOR == 1 ]] && cp "$PGO/use/$HOST/release/examples/bare_proxy" "$PGO/bare_proxy"
# A floor built before with other inputs must not pass for one of these.
[[ $FLOOR == 0 ]] && rm -f "$PGO/bare_proxy"
echo "$INPUTS" >"$PGO/inputs.sha256"
log "built $PGO/session-proxy$([[ $FLOOR == 1 ]] && echo " and $PGO/bare_proxy")"
