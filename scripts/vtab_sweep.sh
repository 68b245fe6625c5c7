#!/usr/bin/env bash
# vtab_sweep.sh - the VTAB-1k sweep: per task, the original's two commands
#
#   python supernet.py  --dataset T --lr LR --model M --save_path RUNS/T/supernet --rank R
#   python evolution.py --dataset T --save_path RUNS/T/<B>M_seed<S> --load_path RUNS/T/supernet \
#                       --param-limits B --rank R --seed S --model M
#
# (plus --no-progress, and --config/--protocol when given) for every budget B and search
# seed S, then `python -m vtab.report RUNS`.
#
# Usage: bash scripts/vtab_sweep.sh [options] [task ...]
#
# Tasks default to the 19 VTAB-1k tasks in paper order: cifar caltech101 dtd oxford_flowers102
# oxford_iiit_pet svhn sun397 patch_camelyon eurosat resisc45 diabetic_retinopathy clevr_count
# clevr_dist dmlab kitti dsprites_loc dsprites_ori smallnorb_azi smallnorb_ele
# (aliases such as cifar100 or pcam are mapped to these folder names).
#
# Options: a flag, or the environment variable in brackets (a flag wins over the variable).
#   --runs DIR              [RUNS]      output root                      (default runs/vtab)
#   --budgets "B ..."       [BUDGETS]   parameter budgets in M           (default "1.0"; e.g. "0.29 0.86")
#   --seeds "S ..."         [SEEDS]     evolution search seeds           (default "1")
#   --rank R                [LORA_RANK] LoRA rank of the supernet        (default 4)
#   --lr LR                 [LR]        supernet learning rate           (default 1e-4)
#   --model NAME            [MODEL]     timm model    (default vit_base_patch16_224_in21k)
#   --protocol val|paper    [PROTOCOL]  DESIGN.md §4 protocols           (default val)
#   --gpus "G ..."          [GPUS]      one worker per entry, pinned with CUDA_VISIBLE_DEVICES=G;
#                                       tasks are dealt round-robin over the workers
#                                       (default: one worker, no pinning)
#   --config FILE.yaml      [CONFIG]    passed as --config to both commands
#   --extra-supernet-args "..." [EXTRA_SUPERNET_ARGS]  appended to every supernet.py command
#   --extra-search-args "..."   [EXTRA_SEARCH_ARGS]    appended to every evolution.py command
#                                       (split on whitespace; no quoting inside)
#   --python CMD            [PYTHON]    interpreter                      (default python)
#   --progress              [PROGRESS=1] keep the progress bars (default: --no-progress is
#                                       passed, since the output goes to log files)
#   --no-report             [NO_REPORT=1] do not run python -m vtab.report at the end
#   -h, --help              this text
# The rank variable is LORA_RANK (the original README's name), not RANK, which distributed
# launchers set to a process index. With CONFIG, --model/--lr/--rank/--protocol are passed only
# when set explicitly, so the YAML's values are not overridden by these defaults.
#
# Steps and restarts (the script can simply be run again with the same options):
#   supernet  done when RUNS/T/supernet/T.pt and RUNS/T/supernet/DONE exist (DONE is written
#             after supernet.py exits 0, with the settings above); a T.pt without DONE is an
#             interrupted run and is continued with --resume. A done supernet whose settings
#             differ from this sweep's is a failure (use another RUNS, or delete its DONE to
#             let supernet.py --resume check the checkpoint's compatibility).
#   search    done when RUNS/T/<B>M_seed<S>/results.json exists; a search_state.json without
#             it is continued with --resume.
# Each step prints a status line (skip/resume/run), and another when its command ends
# (ok/FAILED/interrupted). Logs, appended to: RUNS/T/supernet.log and RUNS/T/<B>M_seed<S>.log. A failed step does not stop the other tasks; at the end a summary
# lists what is done and what failed (with its log), then the report is written to RUNS
# (report.md, report.csv; output in RUNS/report.log) if any results.json exists.
# Exit status: 0 all done, 1 something failed, 2 usage error, 130 interrupted (Ctrl-C or
# SIGTERM: the running commands get SIGINT and save their state; rerun to continue).
# Relative RUNS and CONFIG are taken from the calling directory; the commands run in the repo
# root, so other relative paths (data/vtab-1k, ViT-B_16.npz, paths in CONFIG or the extra
# arguments) are relative to the repo root.
#
# Examples:
#   GPUS="0 1 2 3" BUDGETS="0.29 0.86" bash scripts/vtab_sweep.sh
#   bash scripts/vtab_sweep.sh --protocol paper --runs runs/vtab_paper cifar dtd
set -u

SCRIPT="${BASH_SOURCE[0]}"
VTAB_TASKS=(cifar caltech101 dtd oxford_flowers102 oxford_iiit_pet svhn sun397
            patch_camelyon eurosat resisc45 diabetic_retinopathy
            clevr_count clevr_dist dmlab kitti dsprites_loc dsprites_ori smallnorb_azi smallnorb_ele)

usage() {  # the header comment above, without the leading '# '
    local line
    while IFS= read -r line; do
        case "$line" in
            '#!'*) ;;
            '#'*) line="${line#\#}"; printf '%s\n' "${line# }" ;;
            *) break ;;
        esac
    done < "$SCRIPT"
}

die() {
    printf 'vtab_sweep: error: %s\n' "$*" >&2
    printf "run 'bash %s --help' for the options\n" "$SCRIPT" >&2
    exit 2
}

# ------------------------------------------------------------------ options
TASKS=()
while (($#)); do
    opt="$1"
    case "$opt" in
        -h|--help) usage; exit 0 ;;
        --no-report) NO_REPORT=1; shift; continue ;;
        --progress) PROGRESS=1; shift; continue ;;
        --) shift; TASKS+=("$@"); break ;;
        --*=*) value="${opt#*=}"; opt="${opt%%=*}"; shift ;;
        -*) (($# >= 2)) || die "$opt needs a value"; value="$2"; shift 2 ;;
        *) TASKS+=("$opt"); shift; continue ;;
    esac
    case "$opt" in
        --runs) RUNS="$value" ;;
        --budgets) BUDGETS="$value" ;;
        --seeds) SEEDS="$value" ;;
        --rank) LORA_RANK="$value" ;;
        --lr) LR="$value" ;;
        --model) MODEL="$value" ;;
        --protocol) PROTOCOL="$value" ;;
        --gpus) GPUS="$value" ;;
        --config) CONFIG="$value" ;;
        --extra-supernet-args) EXTRA_SUPERNET_ARGS="$value" ;;
        --extra-search-args) EXTRA_SEARCH_ARGS="$value" ;;
        --python) PYTHON="$value" ;;
        *) die "unknown option $opt" ;;
    esac
done

CONFIG="${CONFIG:-}"
# Set explicitly (non-empty) before the defaults are applied?
MODEL_SET="${MODEL:+1}" LR_SET="${LR:+1}" RANK_SET="${LORA_RANK:+1}" PROTOCOL_SET="${PROTOCOL:+1}"
RUNS="${RUNS:-runs/vtab}"
BUDGETS="${BUDGETS:-1.0}"
SEEDS="${SEEDS:-1}"
LORA_RANK="${LORA_RANK:-4}"
LR="${LR:-1e-4}"
MODEL="${MODEL:-vit_base_patch16_224_in21k}"
PROTOCOL="${PROTOCOL:-val}"
GPUS="${GPUS:-}"
EXTRA_SUPERNET_ARGS="${EXTRA_SUPERNET_ARGS:-}"
EXTRA_SEARCH_ARGS="${EXTRA_SEARCH_ARGS:-}"
PYTHON="${PYTHON:-python}"
NO_REPORT="${NO_REPORT:-0}"
PROGRESS="${PROGRESS:-0}"

read -r -a BUDGET_LIST <<< "$BUDGETS"
read -r -a SEED_LIST <<< "$SEEDS"
read -r -a GPU_LIST <<< "$GPUS"
read -r -a EXTRA_SUPERNET <<< "$EXTRA_SUPERNET_ARGS"
read -r -a EXTRA_SEARCH <<< "$EXTRA_SEARCH_ARGS"
((${#TASKS[@]})) || TASKS=("${VTAB_TASKS[@]}")

NUMBER='^([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$'
((${#BUDGET_LIST[@]})) || die "no budgets given"
((${#SEED_LIST[@]})) || die "no seeds given"
for b in "${BUDGET_LIST[@]}"; do [[ "$b" =~ $NUMBER ]] || die "budget '$b' is not a number (in M)"; done
for s in "${SEED_LIST[@]}"; do [[ "$s" =~ ^[0-9]+$ ]] || die "seed '$s' is not a non-negative integer"; done
for g in ${GPU_LIST[@]+"${GPU_LIST[@]}"}; do
    [[ "$g" =~ ^[A-Za-z0-9,:_-]+$ ]] || die "GPU '$g' is not a CUDA_VISIBLE_DEVICES value"
done
[[ "$LORA_RANK" =~ ^[1-9][0-9]*$ ]] || die "rank '$LORA_RANK' is not a positive integer"
[[ "$LR" =~ $NUMBER ]] || die "lr '$LR' is not a number"
[[ "$PROTOCOL" == val || "$PROTOCOL" == paper ]] || die "protocol '$PROTOCOL' is not val or paper"
for t in "${TASKS[@]}"; do
    [[ "$t" =~ ^[A-Za-z0-9_.-]+$ && "$t" != . && "$t" != .. ]] || die "'$t' is not a task name"
done

# Relative RUNS and CONFIG are the caller's; everything runs from the repo root.
ROOT="$(cd "$(dirname "$SCRIPT")/.." && pwd)" || die "cannot find the repo root"
absolute() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s' "$PWD/$1" ;; esac; }
relative_to_root() { case "$1" in "$ROOT"/*) printf '%s' "${1#"$ROOT"/}" ;; *) printf '%s' "$1" ;; esac; }
RUNS="$(relative_to_root "$(absolute "$RUNS")")"
if [[ -n "$CONFIG" ]]; then
    [[ -f "$CONFIG" ]] || die "config file not found: $CONFIG"
    CONFIG="$(relative_to_root "$(absolute "$CONFIG")")"
fi
cd "$ROOT" || die "cannot cd to $ROOT"
command -v "$PYTHON" > /dev/null 2>&1 || die "python interpreter '$PYTHON' not found (set PYTHON)"
mkdir -p "$RUNS" || die "cannot create $RUNS"

# Task aliases -> folder names (vtab/tasks.py alone: no torch import); names stay as given if
# that fails, and an unknown name then fails in its own supernet step.
mapfile -t CANON < <("$PYTHON" - "${TASKS[@]}" 2> /dev/null <<'EOF'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("_vtab_sweep_tasks", "vtab/tasks.py")
tasks = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = tasks
spec.loader.exec_module(tasks)
for name in sys.argv[1:]:
    try:
        print(tasks.resolve_task(name).name)
    except Exception:
        print(name)
EOF
)
UNIQUE=()
for i in "${!TASKS[@]}"; do
    name="${TASKS[$i]}"
    if ((${#CANON[@]} == ${#TASKS[@]})) && [[ "${CANON[$i]}" != "$name" ]]; then
        printf 'vtab_sweep: task %s -> %s\n' "$name" "${CANON[$i]}"
        name="${CANON[$i]}"
    fi
    case " ${UNIQUE[*]-} " in *" $name "*) printf 'vtab_sweep: task %s given twice\n' "$name" ;;
                                 *) UNIQUE+=("$name") ;; esac
done
TASKS=("${UNIQUE[@]}")

# The flags both commands share. With CONFIG, only what was set explicitly.
COMMON=()
shown() {  # the value a command gets, or (config) when the YAML decides
    if [[ -n "$2" || -z "$CONFIG" ]]; then printf '%s' "$1"; else printf '(config)'; fi
}
[[ -n "$MODEL_SET" || -z "$CONFIG" ]] && COMMON+=(--model "$MODEL")
[[ -n "$RANK_SET" || -z "$CONFIG" ]] && COMMON+=(--rank "$LORA_RANK")
[[ -n "$CONFIG" ]] && COMMON+=(--config "$CONFIG")
[[ -n "$PROTOCOL_SET" ]] && COMMON+=(--protocol "$PROTOCOL")
[[ "$PROGRESS" == 1 ]] || COMMON+=(--no-progress)
LR_ARGS=()
[[ -n "$LR_SET" || -z "$CONFIG" ]] && LR_ARGS=(--lr "$LR")
SETTINGS="model=$(shown "$MODEL" "$MODEL_SET") rank=$(shown "$LORA_RANK" "$RANK_SET")"
SETTINGS+=" protocol=$(shown "$PROTOCOL" "$PROTOCOL_SET") lr=$(shown "$LR" "$LR_SET") config=${CONFIG:-none}"

STATUS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/vtab_sweep.XXXXXX")" || die "mktemp failed"
trap 'rm -rf -- "$STATUS_DIR"' EXIT

# ------------------------------------------------------------------ one worker
PREFIX=""
STOP=0

say() { printf '%s%s\n' "$PREFIX" "$*"; }

record() {  # task state step detail  (state: ok | failed | interrupted)
    printf '%s\t%s\t%s\n' "$2" "$3" "${4:-}" >> "$STATUS_DIR/$1"
}

last_line() {  # the last non-empty line of a log, for the summary
    local line="" text l
    text="$(tail -n 20 "$1" 2> /dev/null)"
    while IFS= read -r l; do l="${l%$'\r'}"; l="${l##*$'\r'}"; [[ -n "${l// /}" ]] && line="$l"; done <<< "$text"
    printf '%s' "${line:0:300}"
}

run_logged() {  # log command...  -> the command's exit status
    local log="$1"; shift
    {
        printf '\n=== %s  %s%s$' "$(date '+%Y-%m-%d %H:%M:%S')" "${CUDA_VISIBLE_DEVICES:+CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES }" "$ROOT"
        printf ' %q' "$@"
        printf '\n'
    } >> "$log"
    "$@" >> "$log" 2>&1 < /dev/null
}

finish_step() {  # task step log rc start  -> 0 if the step succeeded
    local task="$1" step="$2" log="$3" rc="$4" start="$5"
    if ((rc == 0)); then
        say "$task $step: ok ($((SECONDS - start))s)"
        return 0
    fi
    if ((STOP)); then
        say "$task $step: interrupted (rerun to resume; log $log)"
        record "$task" interrupted "$step" "log: $log"
    else
        say "$task $step: FAILED (exit $rc; log $log)"
        record "$task" failed "$step" "exit $rc: $(last_line "$log"); log: $log"
    fi
    return 1
}

settings_of() {  # the settings line of a DONE file
    local line
    while IFS= read -r line; do
        case "$line" in 'settings: '*) printf '%s' "${line#settings: }"; return ;; esac
    done < "$1"
}

supernet_step() {  # task -> 0 when the supernet is done
    local task="$1" dir="$RUNS/$1/supernet" log="$RUNS/$1/supernet.log" start=$SECONDS
    local ckpt="$RUNS/$1/supernet/$1.pt" done_file="$RUNS/$1/supernet/DONE" rc old
    local cmd=("$PYTHON" supernet.py --dataset "$task" ${LR_ARGS[@]+"${LR_ARGS[@]}"}
               --save_path "$dir" "${COMMON[@]}")
    if [[ -f "$ckpt" && -f "$done_file" ]]; then
        old="$(settings_of "$done_file")"
        if [[ -n "$old" && "$old" != "$SETTINGS" ]]; then
            say "$task supernet: FAILED (done with other settings: $old)"
            record "$task" failed supernet "$done_file has '$old', this sweep '$SETTINGS'; use another RUNS, or delete DONE to let supernet.py --resume check the checkpoint"
            return 1
        fi
        say "$task supernet: skip (done)"
        return 0
    fi
    if [[ -f "$ckpt" ]]; then
        say "$task supernet: resume ($ckpt without DONE; log $log)"
        cmd+=(--resume)
    else
        rm -f -- "$done_file"
        say "$task supernet: run (log $log)"
    fi
    cmd+=(${EXTRA_SUPERNET[@]+"${EXTRA_SUPERNET[@]}"})
    run_logged "$log" "${cmd[@]}"
    rc=$?
    if ((rc == 0)) && [[ ! -f "$ckpt" ]]; then
        printf 'vtab_sweep: supernet.py exited 0 but %s is missing\n' "$ckpt" >> "$log"
        rc=1
    fi
    finish_step "$task" supernet "$log" "$rc" "$start" || return 1
    { printf 'settings: %s\n' "$SETTINGS"; printf 'finished: %s\n' "$(date '+%Y-%m-%d %H:%M:%S')"
      printf 'command:'; printf ' %q' "${cmd[@]}"; printf '\n'; } > "$done_file"
}

search_step() {  # task budget seed
    local task="$1" name="$2M_seed$3" start=$SECONDS rc
    local out="$RUNS/$1/$2M_seed$3" log="$RUNS/$1/$2M_seed$3.log"
    local cmd=("$PYTHON" evolution.py --dataset "$task" --save_path "$out" --load_path "$RUNS/$task/supernet"
               --param-limits "$2" --seed "$3" "${COMMON[@]}")
    if [[ -f "$out/results.json" ]]; then
        say "$task $name: skip (done)"
        return 0
    fi
    if [[ -f "$out/search_state.json" ]]; then
        say "$task $name: resume ($out/search_state.json without results.json; log $log)"
        cmd+=(--resume)
    else
        say "$task $name: run (log $log)"
    fi
    cmd+=(${EXTRA_SEARCH[@]+"${EXTRA_SEARCH[@]}"})
    run_logged "$log" "${cmd[@]}"
    rc=$?
    if ((rc == 0)) && [[ ! -f "$out/results.json" ]]; then
        printf 'vtab_sweep: evolution.py exited 0 but %s is missing\n' "$out/results.json" >> "$log"
        rc=1
    fi
    finish_step "$task" "$name" "$log" "$rc" "$start"
}

run_task() {
    local task="$1" budget seed
    if ! mkdir -p "$RUNS/$task/supernet"; then
        record "$task" failed supernet "cannot create $RUNS/$task/supernet"
        return
    fi
    if ! supernet_step "$task"; then
        ((STOP)) && return
        for budget in "${BUDGET_LIST[@]}"; do
            for seed in "${SEED_LIST[@]}"; do
                record "$task" failed "${budget}M_seed$seed" "not run: the supernet failed ($RUNS/$task/supernet.log)"
            done
        done
        return
    fi
    record "$task" ok supernet
    for budget in "${BUDGET_LIST[@]}"; do
        for seed in "${SEED_LIST[@]}"; do
            ((STOP)) && return
            search_step "$task" "$budget" "$seed" && record "$task" ok "${budget}M_seed$seed"
        done
    done
}

worker() {  # gpu task...   (gpu empty: no pinning)
    local gpu="$1" task; shift
    trap 'STOP=1' INT TERM  # the running command got SIGINT too; stop after it has saved
    if [[ -n "$gpu" ]]; then
        export CUDA_VISIBLE_DEVICES="$gpu"
        PREFIX="[gpu $gpu] "
    fi
    for task in "$@"; do
        ((STOP)) && break
        run_task "$task"
    done
}

# ------------------------------------------------------------------ main
((${#GPU_LIST[@]})) || GPU_LIST=("")
NWORKERS=${#GPU_LIST[@]}
((NWORKERS <= ${#TASKS[@]})) || NWORKERS=${#TASKS[@]}
printf 'vtab_sweep: %d task(s), budgets %s M, seeds %s, %s; RUNS=%s\n' "${#TASKS[@]}" \
    "${BUDGET_LIST[*]}" "${SEED_LIST[*]}" "$SETTINGS" "$RUNS"
if [[ -n "${GPU_LIST[0]}" ]]; then
    printf 'vtab_sweep: %d worker(s) on GPUs %s\n' "$NWORKERS" "${GPU_LIST[*]:0:NWORKERS}"
fi

# Every worker is a background job in its own process group (set -m), so a Ctrl-C reaches this
# shell only, which passes it on as SIGINT to each worker's group (the python commands save their
# state on SIGINT) and waits for them; SIGTERM is passed on the same way.
INTERRUPTED=0
PIDS=()
# shellcheck disable=SC2317  # (a trap handler)
forward() {
    INTERRUPTED=1
    local pid
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill -INT -- "-$pid" 2> /dev/null; done
}
trap forward INT TERM
set -m
for ((w = 0; w < NWORKERS && !INTERRUPTED; w++)); do
    mine=()
    for ((i = w; i < ${#TASKS[@]}; i += NWORKERS)); do mine+=("${TASKS[$i]}"); done
    worker "${GPU_LIST[$w]}" "${mine[@]}" &
    PIDS+=("$!")
done
set +m
for pid in "${PIDS[@]}"; do
    while :; do
        wait "$pid"
        kill -0 "$pid" 2> /dev/null || break  # else the wait was cut short by a signal
    done
done
trap - INT TERM

# ------------------------------------------------------------------ summary
DONE_TASKS=()
FAILED=0
REPORT_LINES=()
for task in "${TASKS[@]}"; do
    status="$STATUS_DIR/$task"
    ok=1
    if [[ ! -f "$status" ]]; then
        REPORT_LINES+=("  not run  $task")
        ok=0
    else
        while IFS=$'\t' read -r state step detail; do
            case "$state" in
                ok) ;;
                interrupted) ok=0; REPORT_LINES+=("  interrupted  $task $step: $detail") ;;
                *) ok=0; FAILED=1; REPORT_LINES+=("  FAILED  $task $step: $detail") ;;
            esac
        done < "$status"
    fi
    ((ok)) && DONE_TASKS+=("$task")
done
printf '\nvtab_sweep summary: %d of %d task(s) done\n' "${#DONE_TASKS[@]}" "${#TASKS[@]}"
((${#DONE_TASKS[@]})) && printf '  done: %s\n' "${DONE_TASKS[*]}"
for line in ${REPORT_LINES[@]+"${REPORT_LINES[@]}"}; do printf '%s\n' "$line"; done

if ((INTERRUPTED)); then
    printf 'vtab_sweep: interrupted; run the same command again to continue\n'
    exit 130
fi

if [[ "$NO_REPORT" != 0 && -n "$NO_REPORT" ]]; then
    printf 'report: skip (NO_REPORT)\n'
elif [[ -z "$(find "$RUNS" -name results.json -print -quit 2> /dev/null)" ]]; then
    printf 'report: skip (no results.json under %s)\n' "$RUNS"
elif "$PYTHON" -m vtab.report "$RUNS" > "$RUNS/report.log" 2>&1 < /dev/null; then
    printf 'report: wrote %s/report.md and report.csv (log %s/report.log)\n' "$RUNS" "$RUNS"
else
    printf 'report: FAILED (log %s/report.log)\n' "$RUNS"
    FAILED=1
fi
exit "$FAILED"
