#!/usr/bin/env bash
# run_train.sh: start `python -m atjt_dist.train` under torchrun, on one node or many.
#
# usage: launch/run_train.sh [-h] [TRAIN_ARGS ...]
#
# TRAIN_ARGS go to `python -m atjt_dist.train` unchanged (e.g. --model.name=sasrec
# --train.epochs=2); `python -m atjt_dist.train --help` lists them. Everything else comes from
# the environment:
#
#   NPROC          processes on this node (default: the GPUs visible here, else 1)
#   NNODES         nodes in the job (default 1). 1: torchrun --standalone (a private
#                  rendezvous on this node). >1 (or a range MIN:MAX): c10d rendezvous at
#                  RDZV_ENDPOINT; run this script once on every node with the same settings.
#   MASTER_ADDR    the rendezvous host when NNODES > 1 (an address or a name every node resolves)
#   MASTER_PORT    its port (default 29400)
#   RDZV_ENDPOINT  host:port, instead of MASTER_ADDR/MASTER_PORT
#   RDZV_ID        the job's rendezvous id, the same on every node (default: SLURM_JOB_ID, else atjt)
#   RDZV_CONF      extra c10d settings, e.g. is_host=1 on the node that serves the rendezvous
#   LOCAL_ADDR     this node's address as others reach it (torchrun --local-addr)
#   NODE_RANK      this node's rank; only meaningful to a static rendezvous (c10d assigns ranks),
#                  passed through when set
#   CONFIG         a YAML config file, passed as --config
#   RUN_DIR        the run directory, passed as --run-dir (must be on a filesystem that every
#                  node sees: rank 0 writes metrics, every rank writes its checkpoint shards)
#   LOG_RANK       which local ranks' output to show: 0 (default), a list such as 0,1, or all.
#                  Every rank's stdout/stderr is also written (torchrun --tee) under LOG_DIR.
#   LOG_DIR        where torchrun writes each rank's output (default RUN_DIR/logs/<node>, or a
#                  temporary directory when RUN_DIR is unset)
#   MAX_RESTARTS   how often torchrun restarts the workers after a failure (default 0)
#   PYTHON         the interpreter (default: python3 on PATH; activate your venv first)
#   DRY_RUN        1: print the command instead of running it
#
# Examples:
#   NPROC=2 launch/run_train.sh --data.path=data/ml-1m --run-dir=runs/ml1m
#   CONFIG=configs/default.yaml RUN_DIR=runs/a launch/run_train.sh --train.epochs=1
#   # two machines, on each of them:
#   NNODES=2 NPROC=8 MASTER_ADDR=node001 RDZV_ID=exp1 RUN_DIR=/shared/runs/exp1 launch/run_train.sh
#
# Network: gloo and NCCL pick the interface from this machine's host name; where that resolves
# to a loopback or the wrong network, set GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME (e.g. eth0,ib0).
# torchrun sets OMP_NUM_THREADS=1 in the workers unless it is set; set it to cores / NPROC.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

die() {
    echo "run_train.sh: $*" >&2
    exit 2
}

if [[ ${1:-} == "-h" || ${1:-} == "--help" ]]; then
    usage
    exit 0
fi

count_gpus() {
    # CUDA_VISIBLE_DEVICES first (Slurm sets it for --gpus), then the driver's list.
    if [[ -n ${CUDA_VISIBLE_DEVICES:-} && ${CUDA_VISIBLE_DEVICES} != "NoDevFiles" ]]; then
        local IFS=,
        # shellcheck disable=SC2086
        set -- $CUDA_VISIBLE_DEVICES
        echo $#
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
    else
        echo 0
    fi
}

is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

PYTHON=${PYTHON:-python3}
NNODES=${NNODES:-1}
if [[ -z ${NPROC:-} ]]; then
    NPROC=$(count_gpus)
    [[ $NPROC -gt 0 ]] || NPROC=1
fi
MAX_RESTARTS=${MAX_RESTARTS:-0}
LOG_RANK=${LOG_RANK:-0}

is_count "$NPROC" || die "NPROC must be a positive integer, got '$NPROC'"
[[ $NNODES =~ ^[1-9][0-9]*(:[1-9][0-9]*)?$ ]] || die "NNODES must be N or MIN:MAX, got '$NNODES'"
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "MAX_RESTARTS must be a non-negative integer, got '$MAX_RESTARTS'"
[[ $LOG_RANK == all || $LOG_RANK =~ ^[0-9]+(,[0-9]+)*$ ]] || die "LOG_RANK must be all or local ranks like 0 or 0,1, got '$LOG_RANK'"

run=("$PYTHON" -m torch.distributed.run --nproc-per-node="$NPROC" --max-restarts="$MAX_RESTARTS")

if [[ $NNODES == 1 ]]; then
    run+=(--standalone)
else
    if [[ -z ${RDZV_ENDPOINT:-} ]]; then
        [[ -n ${MASTER_ADDR:-} ]] || die "NNODES=$NNODES needs MASTER_ADDR (the rendezvous host) or RDZV_ENDPOINT=host:port"
        RDZV_ENDPOINT="$MASTER_ADDR:${MASTER_PORT:-29400}"
    fi
    run+=(--nnodes="$NNODES" --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="${RDZV_ID:-${SLURM_JOB_ID:-atjt}}")
    [[ -z ${RDZV_CONF:-} ]] || run+=(--rdzv-conf="$RDZV_CONF")
    [[ -z ${LOCAL_ADDR:-} ]] || run+=(--local-addr="$LOCAL_ADDR")
    [[ -z ${NODE_RANK:-} ]] || run+=(--node-rank="$NODE_RANK")
fi

node=${SLURMD_NODENAME:-$(hostname)}
if [[ -z ${LOG_DIR:-} && -n ${RUN_DIR:-} ]]; then
    LOG_DIR="$RUN_DIR/logs/$node"
fi
# Every rank's output goes to a file; the console shows LOG_RANK's.
run+=(--tee=3)
[[ -z ${LOG_DIR:-} ]] || run+=(--log-dir="$LOG_DIR")
[[ $LOG_RANK == all ]] || run+=(--local-ranks-filter="$LOG_RANK")

train=(-m atjt_dist.train)
[[ -z ${CONFIG:-} ]] || train+=(--config "$CONFIG")
[[ -z ${RUN_DIR:-} ]] || train+=(--run-dir "$RUN_DIR")

cmd=("${run[@]}" "${train[@]}" "$@")
if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
[[ -z ${CONFIG:-} || -f $CONFIG ]] || die "CONFIG=$CONFIG: no such file"
echo "run_train.sh [$node]: $NNODES node(s) x $NPROC process(es); every rank's output is under ${LOG_DIR:-a temporary directory (torchrun prints it)}" >&2
exec "${cmd[@]}"
