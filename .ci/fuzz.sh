#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time; fails when any target crashes.
#
#   FUZZ_SECONDS  seconds per target (default 30)
#   FUZZ_TARGETS  space-separated targets (default: every target `cargo fuzz list` names)
#   FUZZ_BUILD_FLAGS  extra `cargo fuzz build`/`run` flags (default: none), e.g.
#                 "--no-trace-compares": no comparison tracing, so no CMP-guided mutations, but
#                 store_ops runs about 1.8x as fast (docs/fuzzing.md, "Observed throughput")
#
# Stable toolchain: `--sanitizer none` (AddressSanitizer needs nightly or RUSTC_BOOTSTRAP=1).
# The checked-in corpus fuzz/corpus/<target>/ seeds each run but is not modified: new inputs
# go to a temporary directory. Crashing inputs are written to fuzz/artifacts/<target>/.
set -euo pipefail

FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
if ! [[ "$FUZZ_SECONDS" =~ ^[0-9]+$ ]] || [ "$FUZZ_SECONDS" -lt 1 ]; then
    echo "fuzz.sh: FUZZ_SECONDS must be a positive integer, got '$FUZZ_SECONDS'" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ -n "${FUZZ_TARGETS:-}" ]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo fuzz list)
fi
if [ "${#targets[@]}" -eq 0 ]; then
    echo "fuzz.sh: no fuzz targets found" >&2
    exit 2
fi

build_flags=()
if [ -n "${FUZZ_BUILD_FLAGS:-}" ]; then
    read -r -a build_flags <<<"$FUZZ_BUILD_FLAGS"
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

cargo fuzz build --sanitizer none "${build_flags[@]}"

failed=()
for target in "${targets[@]}"; do
    echo "=== fuzz.sh: $target for ${FUZZ_SECONDS}s"
    mkdir -p "$scratch/$target"
    seeds=()
    if [ -d "corpus/$target" ]; then
        seeds=("corpus/$target")
    fi
    # -timeout: an input running longer than 10 s counts as a crash (a hang).
    if ! cargo fuzz run "$target" "$scratch/$target" "${seeds[@]}" --sanitizer none "${build_flags[@]}" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -print_final_stats=1; then
        echo "fuzz.sh: $target FAILED; reproduce with:" >&2
        echo "  cd fuzz && cargo fuzz run $target --sanitizer none artifacts/$target/<crash-file>" >&2
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz.sh: all ${#targets[@]} targets ran ${FUZZ_SECONDS}s without a crash"
