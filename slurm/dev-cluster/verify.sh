#!/usr/bin/env bash
# slurm/dev-cluster/verify.sh -- exercise the dev cluster started by start.sh with plain Slurm
# commands (sbatch, squeue, sacct, scancel, arrays, dependencies, requeue, GPUs).
# Prints "N passed, N failed" at the end; exit status 1 if anything failed.
set -uo pipefail
OUT=${VERIFY_DIR:-$(mktemp -d)}; mkdir -p "$OUT"; cd "$OUT"
pass=0 fail=0
ok()  { echo "PASS: $*"; pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
state() { scontrol show job "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
wait_state() {  # wait_state JOB 'REGEX' SECONDS -> prints final state
  local j=$1 re=$2 t=$3 s i
  for ((i = 0; i < t * 10; i++)); do s=$(state "$j"); [[ $s =~ ^($re)$ ]] && break; sleep 0.1; done
  echo "$s"
}
has_dbd() { [[ $(scontrol show config) == *accounting_storage/slurmdbd* ]]; }
sacct_state() {  # final state from accounting (retries: records arrive a moment after the job ends)
  local s i
  for i in $(seq 1 30); do s=$(sacct -n -X -P -j "$1" -o State 2>/dev/null | head -1 | awk '{print $1}'); [[ -n $s && $s != RUNNING && $s != PENDING ]] && break; sleep 0.2; done
  echo "$s"
}
NNODES=$(sinfo -h -N -o %N | sort -u | wc -l)

sinfo -h -o '%a %D %t' | grep -q '^up' && ok "sinfo: partition up ($(sinfo -h -o '%D %t %G' | paste -sd' ' -))" || bad "sinfo"

j=$(sbatch --parsable -o "$OUT/%j.out" --wrap 'hostname; echo node=$SLURMD_NODENAME')
[[ $(wait_state "$j" 'COMPLETED|FAILED|CANCELLED' 30) == COMPLETED ]] && ok "sbatch --wrap hostname -> $(paste -sd' ' "$OUT/$j.out")" || bad "sbatch hostname ($(state "$j"))"

j=$(sbatch --parsable -o /dev/null --wrap 'sleep 300')
[[ $(wait_state "$j" RUNNING 30) == RUNNING ]] && squeue -h -j "$j" -o %T | grep -q RUNNING && ok "squeue shows RUNNING" || bad "squeue running"
scancel "$j"; [[ $(wait_state "$j" CANCELLED 30) == CANCELLED ]] && ok "scancel -> CANCELLED" || bad "scancel ($(state "$j"))"

j=$(sbatch --parsable -o /dev/null --wrap 'echo boom >&2; exit 3')
s=$(wait_state "$j" 'COMPLETED|FAILED' 30)
ec=$(scontrol show job "$j" | grep -o ' ExitCode=[0-9:]*' | cut -d= -f2)
[[ $s == FAILED && $ec == 3:0 ]] && ok "failing job: scontrol JobState=$s ExitCode=$ec" || bad "failing job: $s $ec"
if has_dbd; then
  a=$(sacct_state "$j"); [[ $a == FAILED ]] && ok "sacct: $(sacct -n -X -P -j "$j" -o JobID,State,ExitCode)" || bad "sacct state '$a'"
fi
sleep 0.5; grep -q "JobId=$j .*JobState=FAILED" /var/log/slurm/jobcomp.log && ok "jobcomp/filetxt records FAILED (also: sacct -c -j $j)" || bad "jobcomp"

aj=$(sbatch --parsable -o "$OUT/arr-%A_%a.out" --array=0-3 --wrap 'echo task=$SLURM_ARRAY_TASK_ID')
dep=$(sbatch --parsable -o "$OUT/%j.out" --dependency=afterok:"$aj" --wrap 'echo dep-ran')
[[ $(wait_state "$dep" 'COMPLETED|FAILED|CANCELLED' 60) == COMPLETED ]] && ok "array 0-3 ($(cat "$OUT"/arr-"$aj"_*.out | paste -sd' ' -)) + afterok dependency ran" || bad "array/dependency"

f=$(sbatch --parsable -o /dev/null --wrap 'exit 1')
dep=$(sbatch --parsable -o /dev/null --dependency=afterok:"$f" --wrap 'echo never')
s=$(wait_state "$dep" CANCELLED 60)
[[ $s == CANCELLED ]] && ok "afterok on failed job -> CANCELLED ($(scontrol show job "$dep" | grep -o 'Reason=[A-Za-z]*'))" || bad "dependency never satisfied: $s"

j=$(sbatch --parsable --requeue -o "$OUT/rq-%j.out" --open-mode=append --wrap 'echo run restart=${SLURM_RESTART_COUNT:-0}; sleep 300')
wait_state "$j" RUNNING 30 >/dev/null
t0=$(date +%s); scontrol requeue "$j"
sleep 2; s=$(wait_state "$j" RUNNING 60)
r=$(scontrol show job "$j" | grep -o 'Restarts=[0-9]*')
[[ $s == RUNNING && $r == Restarts=1 ]] && ok "--requeue + scontrol requeue: running again after $(($(date +%s) - t0))s, $r" || bad "requeue: $s $r"
scancel "$j"

if sinfo -h -o %G | grep -q gpu; then
  for spec in "--gres=gpu:4" "--gres=gpu:8" "--gpus=4" "-N$NNODES --gres=gpu:8"; do
    j=$(sbatch --parsable $spec -o "$OUT/g-%j.out" --wrap 'echo $SLURMD_NODENAME:$CUDA_VISIBLE_DEVICES')
    [[ $(wait_state "$j" 'COMPLETED|FAILED|CANCELLED' 60) == COMPLETED ]] && ok "$spec -> $(paste -sd' ' "$OUT/g-$j.out")" || bad "$spec"
  done
  if err=$(sbatch --gres=gpu:9 --wrap true 2>&1); then bad "gpu:9 accepted"; else ok "--gres=gpu:9 rejected: ${err#sbatch: error: }"; fi
fi

echo "$pass passed, $fail failed"
((fail == 0))
