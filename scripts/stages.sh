# Stages for scripts/test and .ci/run (sourced, not run): each stage is announced with `==>`,
# runs under `timeout` with a generous limit, and ends with its wall time; a table of every
# stage's time and result is printed at the end (also when a stage fails or times out).
#
#   stage "NAME" LIMIT COMMAND [ARGS...]   LIMIT as for timeout(1): 40m, 90s
#
# COMMAND runs in its own process group under timeout(1), which on expiry signals the whole group
# (npm, node, cargo and the test binaries they started), then SIGKILLs it 30 s later. Shell
# functions must be exported (`export -f`) and run through `bash -c`. The first script to source
# this file owns the table (FALGATE_STAGES, a file); a script it runs appends its own stages to it.

if [ -z "${FALGATE_STAGES:-}" ]; then
  FALGATE_STAGES=$(mktemp "${TMPDIR:-/tmp}/falgate-stages.XXXXXX")
  export FALGATE_STAGES
  trap 'stages_summary; rm -f "$FALGATE_STAGES"' EXIT
fi

# 75 -> "1m15s".
stages_duration() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

stage() {
  local name=$1 limit=$2 start=$SECONDS status=0 result
  shift 2
  printf '\n==> %s (limit %s)\n' "$name" "$limit"
  timeout --kill-after=30s "$limit" "$@" || status=$?
  local took=$((SECONDS - start))
  case $status in
    0) result=ok ;;
    124 | 137) result="TIMED OUT after $limit" ;;
    *) result="failed (exit $status)" ;;
  esac
  printf '%s\t%s\t%s\n' "$name" "$took" "$result" >>"$FALGATE_STAGES"
  printf '<== %s: %s, %s\n' "$name" "$(stages_duration "$took")" "$result"
  if [ "$status" -ne 0 ]; then
    if [ "$result" != "failed (exit $status)" ]; then
      printf 'stage "%s" timed out after %s: stopped (a hang, or a machine far slower than CI)\n' "$name" "$limit" >&2
    fi
    exit "$status"
  fi
}

stages_summary() {
  [ -s "$FALGATE_STAGES" ] || return 0
  local total=0 name took result
  printf '\n==> wall time per stage\n'
  printf '%-58s %9s  %s\n' stage time result
  while IFS=$'\t' read -r name took result; do
    printf '%-58s %9s  %s\n' "$name" "$(stages_duration "$took")" "$result"
    total=$((total + took))
  done <"$FALGATE_STAGES"
  printf '%-58s %9s\n' total "$(stages_duration "$total")"
}
