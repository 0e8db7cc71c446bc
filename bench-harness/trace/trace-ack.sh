#!/bin/bash
# Traces where a durable ack's time goes: runs `brokerbench --latency-only --runs 1` with
# ftrace recording io_uring, block, scheduler and socket-syscall events during the latency
# case only, then breaks the records' time down with ack-stages.py.
#
#   sudo bench-harness/trace/trace-ack.sh OUT.txt [brokerbench flags, e.g. --seconds 2]
#
# Needs root and tracefs (mounted here if it is not). Tracing costs a few microseconds per
# event, so the figures are a little above an untraced run's; compare stages, not totals
# across runs.
set -euo pipefail
out=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
bench=${BROKERBENCH:-$here/../../target/release/brokerbench}
T=/sys/kernel/tracing
mountpoint -q $T || mount -t tracefs nodev $T
echo 0 > $T/tracing_on
# Tracing stops however this ends (a failed bench, ^C).
trap 'echo 0 > $T/tracing_on; echo 0 > $T/events/enable' EXIT
echo > $T/trace
echo mono > $T/trace_clock
echo 131072 > $T/buffer_size_kb
echo 0 > $T/events/enable
for event in io_uring/io_uring_submit_req io_uring/io_uring_complete \
    block/block_rq_issue block/block_rq_complete \
    syscalls/sys_enter_sendto syscalls/sys_exit_recvfrom \
    sched/sched_wakeup sched/sched_switch irq/irq_handler_entry; do
    echo 1 > $T/events/$event/enable
done
# The latency case is the last of a run: it starts after the loopback line is printed.
"$bench" --latency-only --runs 1 "$@" 2>&1 | while IFS= read -r line; do
    echo "$line"
    case "$line" in
    *"loopback round trip"*) echo 1 > $T/tracing_on ;;
    *"single records at"*) echo 0 > $T/tracing_on ;;
    esac
done
echo 0 > $T/tracing_on
cat $T/trace > "$out"
python3 "$here/ack-stages.py" "$out"
