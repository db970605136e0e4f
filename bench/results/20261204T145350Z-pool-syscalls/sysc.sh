#!/bin/bash
# usage: sysc.sh BIN LABEL OUT [extra runcast args]: syscall counts (perf stat -e syscalls:sys_enter_*) of runcast over a 5 s storm at 2,000 POST/s (bench/run storm's setup, by hand); TRACE=0: no perf
BIN=$1; LABEL=$2; OUT=$3; shift 3
DP=$((20000 + RANDOM % 10000)); P=$((DP+1))
LG=/work/wt-pool/bench/build/loadgen
taskset -c 0 $BIN demo-agent --listen 127.0.0.1:$DP > /tmp/sysc-demo.log 2>&1 &
DEMO=$!
sleep 0.3
taskset -c 1 $BIN --listen 127.0.0.1:$P --upstream http://127.0.0.1:$DP --history 1000 --heartbeat 15s --max-subscribers 200000 --log-level warn --max-concurrent-runs 1000 "$@" > /tmp/sysc-rc.log 2>&1 &
RC=$!
for i in $(seq 50); do curl -s -o /dev/null localhost:$P/healthz && break; sleep 0.1; done
if [ "${TRACE:-1}" = 1 ]; then perf stat -x, -e raw_syscalls:sys_enter -e syscalls:sys_enter_epoll_wait -e syscalls:sys_enter_epoll_ctl -e syscalls:sys_enter_setsockopt -e syscalls:sys_enter_poll -e syscalls:sys_enter_getsockname -e syscalls:sys_enter_connect -e syscalls:sys_enter_recvfrom -e syscalls:sys_enter_write -e syscalls:sys_enter_fcntl -e syscalls:sys_enter_getpeername -e syscalls:sys_enter_sendto -e syscalls:sys_enter_close -e syscalls:sys_enter_socket -e syscalls:sys_enter_io_uring_enter -e syscalls:sys_enter_read -e syscalls:sys_enter_getsockopt -e syscalls:sys_enter_sendmsg -e syscalls:sys_enter_accept4 -e syscalls:sys_enter_shutdown -e syscalls:sys_enter_brk -p $RC -o $OUT.stat > /dev/null 2>&1 & fi
PT=$!; [ "${TRACE:-1}" = 1 ] || PT=
sleep 1
taskset -c 0 $LG --mode storm --port $P --demo-port $DP --server-pid $RC --aux-pid $DEMO --sessions 100 --rate 2000 --duration 5 --post-conns 16 --directives '!events=3 !rate=20' > $OUT.json 2> $OUT.err
sleep 2.5
[ -n "$PT" ] && { kill -INT $PT; wait $PT; }
curl -s localhost:$P/metrics | grep -E "pool_sockets_total\{|runs_total\{" > $OUT.metrics
kill $RC $DEMO; wait
echo "$LABEL done"
