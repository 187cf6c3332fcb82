#!/usr/bin/env bash
# The layer-selection study on one machine, at the scale its caller sets (run_gpu.sh: the priming
# study's teacher on an H200; run_cpu.sh: a tiny teacher on a CPU). Steps:
#   1. the teacher (prime-train --stage pt), unless TEACHER names one;
#   2. every scorer on it (prime-select --out results/scores_<scorer>.csv; cost in seconds);
#   3. every placement of KEEP attention layers among the teacher's L (up to MAX_HYBRIDS), each
#      converted to LAYER, aligned and distilled the same short way, with its validation PPL;
#   4. analyze.py: rank correlations with kl-restore and with the hybrids' PPL, each scorer's
#      chosen hybrid against uniform and middle, costs -> $OUT/table.md.
# Everything it is told comes from the environment (see the defaults below).
set -uo pipefail
cd "$(dirname "$0")/../.."
: "${BIN:?}" "${OUT:?}" "${WORK:?}" "${TRAIN:?}" "${VAL:?}" "${TEACHER_SPEC:?}"
DEVICE=${DEVICE:-cpu}; DTYPE=${DTYPE:-fp32}; SEQ=${SEQ:-256}; LAYER=${LAYER:-GDN}; KEEP=${KEEP:-2}
TEACHER_TOKENS=${TEACHER_TOKENS:-1M}; TEACHER_BATCH=${TEACHER_BATCH:-16K}; TEACHER_LR=${TEACHER_LR:-3e-3}
TEACHER_SECONDS=${TEACHER_SECONDS:-600}; STAGE_TOKENS=${STAGE_TOKENS:-64K}; STAGE_BATCH=${STAGE_BATCH:-8K}
VAL_TOKENS=${VAL_TOKENS:-32768}; PARALLEL=${PARALLEL:-2}; MAX_HYBRIDS=${MAX_HYBRIDS:-15}
SELECT_ARGS=${SELECT_ARGS:-"--window 64 --seq-len $SEQ --sequences 8 --batch 4"}
ALIGN_STEPS=${ALIGN_STEPS:-100}; RESTORE_ALIGN_STEPS=${RESTORE_ALIGN_STEPS:-50}; RESTORE_STEPS=${RESTORE_STEPS:-20}
mkdir -p "$OUT" "$WORK"
log=$OUT/study.log
say() { echo "$*" | tee -a "$log"; }
ppl() {  # ppl MODEL JSON -> PPL
  $BIN/prime-eval --model "$1" --device $DEVICE --dtype $DTYPE --ppl "$VAL" --ctx $SEQ --stride $((SEQ / 2)) \
    --max-tokens $VAL_TOKENS --batch 8 --json "$2" --force > /dev/null 2>>"$log" &&
    python3 -c "import json;d=json.load(open('$2'));p=d.get('ppl',d);print('%.3f'%p['ppl'])"
}

# 1. The teacher.
teacher=${TEACHER:-}
if [ -z "$teacher" ]; then
  start=$(date +%s)
  rm -rf "$WORK/teacher"
  timeout $TEACHER_SECONDS $BIN/prime-train --model "$TEACHER_SPEC" --stage pt --data "$TRAIN" --tokens $TEACHER_TOKENS \
    --batch-tokens $TEACHER_BATCH --seq-len $SEQ --lr $TEACHER_LR --warmup 20 --schedule cosine --save-every 25 --keep 1 \
    --device $DEVICE --dtype $DTYPE --log-every 25 --out "$WORK/teacher" > "$OUT/teacher.log" 2>&1
  say "teacher: exit $? after $(( $(date +%s) - start )) s; $(tail -1 "$OUT/teacher.log")"
  teacher=$WORK/teacher/final
fi
layers=$(python3 -c "import json;print(json.load(open('$teacher/config.json'))['num_hidden_layers'])")
say "teacher $teacher: $layers layers, val PPL $(ppl "$teacher" "$OUT/teacher_ppl.json")"

# 2. The scorers (the selection data is the training shard; PPL is measured on the validation one).
select_one() {  # select_one NAME SCORER [extra flags]
  local name=$1 scorer=$2; shift 2
  $BIN/prime-select --source "$teacher" --scorer $scorer --data "$TRAIN" $SELECT_ARGS --layer $LAYER \
    --ratios ${RATIOS:-1:1,1:3,1:7} --device $DEVICE --out "$OUT/scores_$name.csv" --force "$@" > "$OUT/select_$name.txt" 2>>"$log" ||
    say "prime-select $name failed"
  say "$name: $(tail -1 "$OUT/select_$name.txt")"
}
select_one swa-sensitivity swa-sensitivity
select_one attention-locality attention-locality
select_one linearization-error linearization-error
select_one linearization-error-aligned linearization-error --align-steps $ALIGN_STEPS
select_one kl-restore kl-restore --restore-align-steps $RESTORE_ALIGN_STEPS --restore-steps $RESTORE_STEPS
ratio=$KEEP:$((layers - KEEP))
RATIOS=$ratio select_one uniform uniform
RATIOS=$ratio select_one middle middle

# 3. Hybrids: every placement of KEEP attention layers, primed the same way.
hybrid() {  # hybrid "i,j"
  local kept=$1 name=h_${1//,/_} pattern=""
  for ((l = 0; l < layers; l++)); do
    case ",$kept," in *",$l,"*) symbol='*' ;; *) symbol=$LAYER ;; esac
    pattern+=${pattern:+-}$symbol
  done
  local dir=$WORK/$name
  rm -rf "$dir"
  $BIN/prime-train --model "$teacher+convert:pattern=$pattern" --teacher "$teacher" --stage align --align-layers mixer \
    --data "$TRAIN" --tokens $STAGE_TOKENS --batch-tokens $STAGE_BATCH --seq-len $SEQ --lr 1e-3 --warmup 5 --seed 1 \
    --device $DEVICE --dtype $DTYPE --log-every 100 --out "$dir/align" > "$OUT/${name}.log" 2>&1 &&
  $BIN/prime-train --model "$dir/align/final" --teacher "$teacher" --stage distill --data "$TRAIN" --tokens $STAGE_TOKENS \
    --batch-tokens $STAGE_BATCH --seq-len $SEQ --lr 3e-4 --warmup 5 --seed 2 --device $DEVICE --dtype $DTYPE \
    --log-every 100 --out "$dir/distill" >> "$OUT/${name}.log" 2>&1 || { echo "$kept failed"; return; }
  echo "$kept $(ppl "$dir/distill/final" "$WORK/$name.json")"
  rm -rf "$dir"
}
placements=$(python3 -c "
import itertools
for c in list(itertools.combinations(range($layers), $KEEP))[:$MAX_HYBRIDS]: print(','.join(map(str, c)))")
start=$(date +%s)
: > "$OUT/hybrids.tsv"
running=0
for kept in $placements; do
  hybrid "$kept" >> "$OUT/hybrids.tsv" &
  running=$((running + 1))
  if [ $running -ge $PARALLEL ]; then wait -n; running=$((running - 1)); fi
done
wait
say "hybrids: $(wc -l < "$OUT/hybrids.tsv") in $(( $(date +%s) - start )) s ($STAGE_TOKENS tokens align + $STAGE_TOKENS distill each)"
cat "$OUT"/h_*.log > "$OUT/hybrid_logs.txt" 2>/dev/null; rm -f "$OUT"/h_*.log

# 4. The table.
python3 experiments/layer_selection/analyze.py "$OUT" $KEEP | tee "$OUT/table.md"
