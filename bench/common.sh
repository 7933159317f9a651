# Shared set-up of the whole-server benchmarks, sourced from the repository root:
#   source bench/common.sh; bench_env test; bench_build --bin infera
# bench_env ENV   the Python environment of scripts/python-env.sh (test or bench), with the
#                 CUDA runtime library perf_analyzer links against on the library path
# bench_build ... cargo build --release with these arguments; sets $target (absolute) and
#                 exports INFERA_BIN

bench_env() {
  source scripts/python-env.sh "$1"
  local cuda_lib
  if cuda_lib=$(python -c 'import nvidia.cuda_runtime as m; print(list(m.__path__)[0] + "/lib")' 2>/dev/null); then
    export LD_LIBRARY_PATH="$cuda_lib:${LD_LIBRARY_PATH:-}"
  fi
}

bench_hey() {
  command -v hey >/dev/null && return
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get install -y -qq hey >/dev/null
}

bench_build() {
  cargo build --release "$@" 2>&1 | tail -1
  target=${CARGO_TARGET_DIR:-target}
  case $target in /*) ;; *) target=$PWD/$target ;; esac
  export INFERA_BIN="$target/release/infera"
}

# bench_baseline  with BENCH_BASELINE_REV set: builds infera at that revision in a git worktree
#                 (same target dir, so only infera's own crates rebuild) and exports
#                 BENCH_BASELINE_BIN, for a before/after in one run
bench_baseline() {
  [ -n "${BENCH_BASELINE_REV:-}" ] || return 0
  local dir=${TMPDIR:-/tmp}/infera-baseline
  git worktree remove --force "$dir" 2>/dev/null || true
  git worktree add --detach "$dir" "$BENCH_BASELINE_REV" >/dev/null
  (cd "$dir" && CARGO_TARGET_DIR="$target" cargo build --release --bin infera -p infera 2>&1 | tail -1)
  mkdir -p "$target/baseline"
  cp "$target/release/infera" "$target/baseline/infera"
  git worktree remove --force "$dir"
  # The baseline build replaced this one's binary; this build's units are still fresh, so this
  # only puts the binary back.
  cargo build --release --bin infera -p infera 2>&1 | tail -1
  export BENCH_BASELINE_BIN="$target/baseline/infera"
}
