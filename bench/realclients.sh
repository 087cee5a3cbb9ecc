#!/usr/bin/env bash
# Wall times of the copies people run, and 1M reads against what loopback
# itself moves, for nbdring, nbdkit and qemu-nbd on one backing store.
#
#   bench/realclients.sh [-f FILE|DEVICE] [-r ROUNDS] [-s SERVER_CPUS] [-c CLIENT_CPUS]
#
# For each server in turn (rounds alternate A B C, C B A, ...):
#   - nbdcopy --connections=4 of the whole export out of the server into a
#     tmpfs file, and from a tmpfs file into the server;
#   - qemu-img convert of the whole export out of and into the server;
#   - fio's nbd engine, 1M sequential reads at QD8 over one TCP connection
#     on loopback, followed at once by iperf3 -l 1M over the same loopback,
#     and the NBD throughput as a share of iperf3's.
# Servers run on SERVER_CPUS (default 0) and clients on CLIENT_CPUS
# (default 1), as `make compare SERVER_CPUS=0 CLIENT_CPUS=1` does.
# Needs: nbdcopy, qemu-img, qemu-nbd, nbdkit, fio, iperf3, taskset,
# /usr/bin/python3 and bin/nbdring (make build). Writes into the backing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
file=$here/var/bench.img rounds=2 scpu=0 ccpu=1
while getopts f:r:s:c: o; do
  case $o in f) file=$OPTARG ;; r) rounds=$OPTARG ;; s) scpu=$OPTARG ;; c) ccpu=$OPTARG ;;
  *) echo "usage: $0 [-f FILE] [-r ROUNDS] [-s SERVER_CPUS] [-c CLIENT_CPUS]" >&2; exit 2 ;;
  esac
done
[ -e "$file" ] || { echo "$file does not exist: make it (make compare does) or pass -f" >&2; exit 2; }
for tool in nbdcopy qemu-img qemu-nbd nbdkit fio iperf3 taskset /usr/bin/python3 \
  "$here/bin/nbdring"; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (make build; apt-get install" \
    "libnbd-bin qemu-utils nbdkit fio iperf3)" >&2; exit 2; }
done
size=$(/usr/bin/python3 -c "import os,sys; f=os.open(sys.argv[1], os.O_RDONLY); \
print(os.lseek(f, 0, 2))" "$file")
work=$(mktemp -d /dev/shm/realclients.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
src=$work/src.img
head -c "$size" /dev/urandom >"$src"
port=$((20000 + RANDOM % 20000))

start() { # start SERVER: serve $file on unix:$work/sock and tcp 127.0.0.1:$port
  rm -f "$work/sock"
  case $1 in
  nbdring) taskset -c "$scpu" "$here/bin/nbdring" -listen "unix:$work/sock" "$file" \
             2>"$work/log" & ;;
  nbdkit) taskset -c "$scpu" nbdkit -f -U "$work/sock" file "file=$file" 2>"$work/log" & ;;
  qemu-nbd) taskset -c "$scpu" qemu-nbd -f raw -k "$work/sock" --cache=none --aio=io_uring \
              -e 64 -t "$file" 2>"$work/log" & ;;
  esac
  pid=$!
  for _ in $(seq 100); do [ -S "$work/sock" ] && break; sleep 0.05; done
  uri="nbd+unix:///?socket=$work/sock"
}
starttcp() {
  case $1 in
  nbdring) taskset -c "$scpu" "$here/bin/nbdring" -listen "127.0.0.1:$port" "$file" \
             2>"$work/log" & ;;
  nbdkit) taskset -c "$scpu" nbdkit -f -i 127.0.0.1 -p "$port" file "file=$file" \
            2>"$work/log" & ;;
  qemu-nbd) taskset -c "$scpu" qemu-nbd -f raw -b 127.0.0.1 -p "$port" --cache=none \
              --aio=io_uring -e 64 -t "$file" 2>"$work/log" & ;;
  esac
  pid=$!
  sleep 0.5
}
stop() { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }
secs() { # secs CMD...: wall seconds of CMD, pinned to the client CPUs
  local t0 t1
  t0=$(date +%s.%N)
  taskset -c "$ccpu" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; return 1; }
  t1=$(date +%s.%N)
  /usr/bin/python3 -c "print('%.2f' % ($t1 - $t0))"
}
fio1m() { # MB/s of 1M sequential reads at QD8 on one TCP connection
  taskset -c "$ccpu" fio --name=r --ioengine=nbd --uri="nbd://127.0.0.1:$port" --rw=read \
    --bs=1M --iodepth=8 --runtime=3 --time_based --output-format=json 2>/dev/null |
    sed -n '/^{/,$p' | /usr/bin/python3 -c \
    "import json,sys; print('%.0f' % (json.load(sys.stdin)['jobs'][0]['read']['bw_bytes']/1e6))"
}
iperf() { # MB/s iperf3 moves over loopback with 1 MiB writes
  taskset -c "$scpu" iperf3 -s -1 -p $((port + 1)) >/dev/null 2>&1 &
  local ip=$!
  sleep 0.3
  taskset -c "$ccpu" iperf3 -c 127.0.0.1 -p $((port + 1)) -l 1M -t 3 -J 2>/dev/null |
    /usr/bin/python3 -c \
    "import json,sys; print('%.0f' % (json.load(sys.stdin)['end']['sum_received']['bytes']/3e6))"
  wait $ip 2>/dev/null || true
}

servers=(nbdring nbdkit qemu-nbd)
echo "backing $file ($size bytes); servers on CPUs $scpu, clients on CPUs $ccpu"
printf '%-3s %-9s %14s %14s %14s %14s %9s %9s %6s\n' rnd server nbdcopy-out nbdcopy-in \
  convert-out convert-in nbd-MB/s iperf-MB/s share
for r in $(seq "$rounds"); do
  order=("${servers[@]}")
  [ $((r % 2)) = 0 ] && order=(qemu-nbd nbdkit nbdring)
  for s in "${order[@]}"; do
    start "$s"
    co=$(secs nbdcopy --connections=4 "$uri" "$work/out.img")
    ci=$(secs nbdcopy --connections=4 "$src" "$uri")
    vo=$(secs qemu-img convert -f raw -O raw "$uri" "$work/out2.img")
    vi=$(secs qemu-img convert -n -f raw -O raw "$src" "$uri")
    stop
    starttcp "$s"
    mb=$(fio1m)
    stop
    ip=$(iperf)
    share=$(/usr/bin/python3 -c "print('%.2f' % ($mb / max($ip, 1)))")
    printf '%-3s %-9s %13ss %13ss %13ss %13ss %9s %9s %6s\n' "$r" "$s" "$co" "$ci" "$vo" \
      "$vi" "$mb" "$ip" "$share"
    rm -f "$work/out.img" "$work/out2.img"
  done
done
