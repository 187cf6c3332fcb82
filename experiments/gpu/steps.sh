# Sourced by the GPU scripts that run their steps while a deadline allows (deadline: seconds since
# the epoch; OUT: the results folder):
#   left: the seconds until the deadline;
#   run SECONDS_NEEDED NAME COMMAND...: COMMAND, its output to $OUT/NAME.txt, if that much time is
#   left (then prints "NAME: exit N" and returns COMMAND's status), else "NAME: skipped" and 1;
#   sanitize SECONDS_NEEDED PREFIX TEST_SPEC: build-gpu/bin/prime_tests TEST_SPEC under
#   compute-sanitizer's memcheck and racecheck (run's rules, output to $OUT/PREFIX_<tool>.txt),
#   printing each one's summary line;
#   begin_out: creates $OUT, packs it into $OUT/all.tgz at exit (the runner brings back only a few
#   files) and records the GPU in $OUT/machine.txt.
left() { echo $(( deadline - $(date +%s) )); }
run() {
  local need=$1 name=$2; shift 2
  if [ "$(left)" -lt "$need" ]; then echo "$name: skipped, $(left) s left"; return 1; fi
  timeout "$(( $(left) - 5 ))" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?; echo "$name: exit $rc"; return $rc
}
sanitize() {
  local need=$1 prefix=$2 spec=$3 tool
  for tool in memcheck racecheck; do
    run "$need" "${prefix}_$tool" compute-sanitizer --tool $tool build-gpu/bin/prime_tests "$spec"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/${prefix}_$tool.txt" | tail -1
  done
}
begin_out() {
  mkdir -p "$OUT"
  trap 'bash experiments/gpu/pack_out.sh "$OUT"' EXIT
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/machine.txt" 2>&1
}
