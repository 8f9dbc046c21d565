# Shared by pipelines/slurm/submit and pipelines/slurm/status (sourced, not run).
#
# A grid's plan (written by pipelines/slurm.mk into <slurm dir>/plan) has one fact a line:
#   name demo | grid DEMO | repo DIR | make MAKE | dir SLURM_DIR | report FILE | inputs FILES...
#   shared noise|augment FILE | args all|train|walk|probe|report SBATCH-OPTIONS...
#   model I ID FILE | walk I KIND TARGETS... | probe I DS TARGET EMBEDDINGS
# The ledger <slurm dir>/jobs has one line per job (array task: ARRAYID_TASK) submitted:
#   JOBID NAME STAGE LABEL TARGETS...
# A target is owned by the last ledger job that lists it while that job is queued or running.

die() { echo "slurm: $*" >&2; exit 1; }

# Loads plan file $1 into P_* globals and the M_*, W_*, PR_* arrays.
load_plan() {
  local file=$1 key rest i kind ds t e
  [ -s "$file" ] || die "no plan in $file"
  P_NAME= P_GRID= P_REPO= P_MAKE=make P_DIR= P_REPORT= P_INPUTS=
  declare -gA P_ARGS=() P_SHARED=() M_ID=() M_FILE=()
  M_IDX=() W_IDX=() W_KIND=() W_TARGETS=() PR_IDX=() PR_DS=() PR_TARGET=() PR_EMB=()
  while read -r key rest; do
    case $key in
      name) P_NAME=$rest ;;
      grid) P_GRID=$rest ;;
      repo) P_REPO=$rest ;;
      make) P_MAKE=$rest ;;
      dir) P_DIR=$rest ;;
      report) P_REPORT=$rest ;;
      inputs) P_INPUTS=$rest ;;
      shared) read -r kind t <<<"$rest"; P_SHARED[$kind]=$t ;;
      args) read -r kind t <<<"$rest" || true; P_ARGS[$kind]=${t:-} ;;
      model) read -r i t e <<<"$rest"; M_IDX+=("$i"); M_ID[$i]=$t; M_FILE[$i]=$e ;;
      walk) read -r i kind t <<<"$rest"; W_IDX+=("$i"); W_KIND+=("$kind"); W_TARGETS+=("$t") ;;
      probe) read -r i ds t e <<<"$rest"; PR_IDX+=("$i"); PR_DS+=("$ds"); PR_TARGET+=("$t"); PR_EMB+=("$e") ;;
      '') ;;
      *) die "$file: unknown line: $key $rest" ;;
    esac
  done < "$file"
  [ -n "$P_NAME" ] && [ -n "$P_DIR" ] && [ -n "$P_REPORT" ] || die "$file: incomplete plan"
  # Paths relative to the repository (as make wrote them) are resolved there.
  cd "$P_REPO" || die "cannot enter $P_REPO"
  P_ABSDIR=$(mkdir -p "$P_DIR" && cd "$P_DIR" && pwd)
  P_LEDGER=$P_DIR/jobs
  touch "$P_LEDGER"
}

# True when Slurm's client commands are here and the controller answers.
slurm_reachable() {
  command -v sbatch >/dev/null && command -v squeue >/dev/null || return 1
  timeout 30 squeue -h -u "$(id -un)" -o %i >/dev/null 2>&1
}

# ACTIVE[jobid]=STATE for this user's queued and running jobs (array tasks one by one), with
# their name in ACTIVE_NAME and comment (our slurm dir) in ACTIVE_DIR. A pending job that can
# never start (a dependency failed) is not active: Slurm cancels it (--kill-on-invalid-dep).
load_active() {
  declare -gA ACTIVE=() ACTIVE_NAME=() ACTIVE_DIR=() ACTIVE_REASON=()
  command -v squeue >/dev/null || return 0
  local out id name state reason comment
  out=$(squeue -h -r -u "$(id -un)" -o '%i|%j|%T|%r|%k' 2>/dev/null) || return 0
  while IFS='|' read -r id name state reason comment; do
    [ -n "$id" ] || continue
    [[ $name == rmqm-* ]] || continue
    [ "$reason" = DependencyNeverSatisfied ] && continue
    ACTIVE[$id]=$state; ACTIVE_NAME[$id]=$name; ACTIVE_DIR[$id]=$comment; ACTIVE_REASON[$id]=$reason
  done <<<"$out"
}

# OWNER[target]=jobid for targets that a queued or running job of this ledger will make;
# LAST[target]=jobid of the last job submitted for it (any state); JOB_STAGE/JOB_LABEL per job.
load_ledger() {
  declare -gA OWNER=() LAST=() JOB_STAGE=() JOB_LABEL=()
  local id name stage label targets t
  while read -r id name stage label targets; do
    [ -n "$id" ] || continue
    JOB_STAGE[$id]=$stage; JOB_LABEL[$id]=$label
    for t in $targets; do
      LAST[$t]=$id
      if [ -n "${ACTIVE[$id]:-}" ] && [ "${ACTIVE_NAME[$id]}" = "$name" ] && [ "${ACTIVE_DIR[$id]}" = "$P_ABSDIR" ]; then
        OWNER[$t]=$id
      else
        unset "OWNER[$t]"
      fi
    done
  done < "$P_LEDGER"
}

# Compact array spec of sorted indices: 0,1,2,5,7,8 -> 0-2,5,7-8.
array_spec() {
  local out= start= prev= i
  for i in "$@"; do
    if [ -z "$start" ]; then start=$i; prev=$i
    elif [ "$i" -eq $((prev + 1)) ]; then prev=$i
    else out+="${out:+,}$start$([ "$start" = "$prev" ] || echo "-$prev")"; start=$i; prev=$i; fi
  done
  [ -z "$start" ] || out+="${out:+,}$start$([ "$start" = "$prev" ] || echo "-$prev")"
  echo "$out"
}

# State of a job that is no longer queued: from the controller while it remembers the job
# (scontrol, MinJobAge), else from the job's log (its last `rmqm-job:` line).
ended_state() {
  local id=$1 log=$2 line state
  line=
  [ "${SLURM_UP:-1}" = 0 ] || line=$(scontrol -o show job "$id" 2>/dev/null | head -n 1) || line=
  if [[ $line == *JobState=* ]]; then
    state=$(sed -E 's/.*JobState=([^ ]+).*/\1/' <<<"$line")
    case $state in
      COMPLETED) echo COMPLETED ;;
      *) echo "$state ($(sed -E 's/.*Reason=([^ ]+).*/\1/' <<<"$line"), exit $(sed -E 's/.* ExitCode=([^ ]+).*/\1/' <<<"$line"))" ;;
    esac
    return
  fi
  if [ -f "$log" ]; then
    line=$(grep -a '^rmqm-job: \(exit\|stopped\)' "$log" | tail -n 1 || true)
    if [ -n "$line" ]; then echo "${line#rmqm-job: }"; else echo "ended without a word (killed?)"; fi
  else
    echo "never ran"
  fi
}

# The log file of job $1 (JOBID or ARRAYID_TASK) of stage $2.
log_of() { echo "$P_DIR/$2-$1.log"; }
