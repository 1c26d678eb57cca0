#!/usr/bin/env bash
# A bounded libFuzzer pass over the gateway's HTTP/1.1 engine (services/gateway/fuzz): request
# heads and their framing, response heads and their framing, the chunked scanner fed in any split.
#
# Builds the targets with `cargo fuzz` (installed from crates.io at a pinned version if missing)
# on the machine's toolchain: a stable one is let use libFuzzer's -Z flags with RUSTC_BOOTSTRAP=1,
# and no sanitizer is needed (the gateway forbids unsafe code). Then runs each target for an equal
# share of SECONDS, starting from the committed seeds (fuzz/seeds/<target>) and the corpus earlier
# runs grew (fuzz/corpus/<target>, not in git). SECONDS bounds the fuzzing, not the first build
# (about 6 minutes on 2 cores; later builds reuse fuzz/target).
#
# Exit status: 0 when every target ran clean, or when the fuzzer cannot be built on this machine
# (a line starting "skipped:" says why); 1 when a target crashed, hung or failed an invariant (the
# input is saved under fuzz/artifacts/<target>/ and the line to reproduce it is printed), or when
# the targets do not compile although the toolchain can build a fuzzer.
#
# Usage: scripts/fuzz-gateway.sh [-t SECONDS]   (default 60)
# FUZZ_SANITIZER=address uses AddressSanitizer instead (slower, a separate build).
set -euo pipefail

SECONDS_TOTAL=60
CARGO_FUZZ_VERSION="0.13.2"
TARGETS=(request_head response_head chunked_split)

while getopts "t:h" opt; do
  case "$opt" in
    t) SECONDS_TOTAL=$OPTARG ;;
    *)
      sed -n '2,17p' "$0"
      exit 2
      ;;
  esac
done
if ! [[ "$SECONDS_TOTAL" =~ ^[0-9]+$ ]] || ((SECONDS_TOTAL < ${#TARGETS[@]})); then
  echo "fuzz-gateway: -t needs at least ${#TARGETS[@]} seconds" >&2
  exit 2
fi

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
FUZZ_DIR="$ROOT/services/gateway/fuzz"
SANITIZER="${FUZZ_SANITIZER:-none}"
PER_TARGET=$((SECONDS_TOTAL / ${#TARGETS[@]}))

skip() {
  echo "skipped: $*"
  exit 0
}

# What a fuzzer build needs beyond the project: cargo-fuzz, a C++ compiler for libFuzzer, and a
# rustc that takes -Z flags.
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
  if ! cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked >/tmp/fuzz-gateway-install.log 2>&1; then
    skip "cargo install cargo-fuzz failed ($(tail -n 1 /tmp/fuzz-gateway-install.log))"
  fi
fi
if ! command -v c++ >/dev/null 2>&1; then
  skip "no C++ compiler (c++) to build libFuzzer"
fi
export RUSTC_BOOTSTRAP=1
if ! rustc -Z unstable-options --print sysroot >/dev/null 2>&1; then
  skip "rustc $(rustc --version | cut -d' ' -f2) does not take -Z flags even with RUSTC_BOOTSTRAP=1"
fi

cd "$FUZZ_DIR"
BIN_DIR="target/$(rustc -vV | sed -n 's/^host: //p')/release"
echo "== building ${TARGETS[*]} (sanitizer: $SANITIZER)"
build_started=$(date +%s)
build_log="$(mktemp)"
if ! cargo fuzz build --sanitizer "$SANITIZER" --release >"$build_log" 2>&1; then
  tail -n 40 "$build_log"
  rm -f "$build_log"
  echo "fuzz-gateway: FAILED: the fuzz targets do not build"
  exit 1
fi
rm -f "$build_log"
echo "   built in $(($(date +%s) - build_started)) s"

failed=()
for target in "${TARGETS[@]}"; do
  mkdir -p "corpus/$target"
  echo "== $target for $PER_TARGET s"
  log="$(mktemp)"
  status=0
  mkdir -p "artifacts/$target"
  # The binary just built, run directly (`cargo fuzz run` would rebuild if a source changed since,
  # outside the time bound). libFuzzer's own limits: a run over 10 s is a hang, over 2 GiB of
  # memory a leak; heads up to 20000 bytes reach past the 16 KiB limit. The outer timeout only
  # guards against libFuzzer itself not stopping.
  timeout --signal=KILL $((PER_TARGET + 120)) \
    "$BIN_DIR/$target" -artifact_prefix="artifacts/$target/" \
    -max_total_time="$PER_TARGET" -timeout=10 -rss_limit_mb=2048 -max_len=20000 \
    -print_final_stats=1 "corpus/$target" "seeds/$target" >"$log" 2>&1 || status=$?
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" | sed 's/^/   /' || true
  if ((status != 0)); then
    failed+=("$target")
    grep -E 'panicked|assertion|ERROR|Test unit written|SUMMARY' "$log" | head -n 20 | sed 's/^/   /' || true
    artifact="$(grep -o 'Test unit written to [^ ]*' "$log" | tail -n 1 | cut -d' ' -f5 || true)"
    if [[ -n "$artifact" ]]; then
      echo "   reproduce: (cd services/gateway/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer $SANITIZER $target $artifact)"
      echo "   add it to seeds/$target once fixed, as a regression input"
    else
      tail -n 20 "$log" | sed 's/^/   /'
    fi
  fi
  rm -f "$log"
done

if ((${#failed[@]} > 0)); then
  echo "fuzz-gateway: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz-gateway: ${#TARGETS[@]} targets, $PER_TARGET s each, no crash"
