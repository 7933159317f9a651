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
