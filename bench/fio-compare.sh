#!/usr/bin/env bash
# Side-by-side fio (nbd ioengine) comparison of NBD servers on one backing
# file: nbdring, qemu-nbd (--cache=none --aio=io_uring) and nbdkit's file
# plugin. Servers run in turn, A B C A B C, so the machine's noise hits all
# of them; each figure is reported with the server's CPU per operation.
#
#   bench/fio-compare.sh [-f FILE] [-s SIZE] [-t SECONDS] [-r ROUNDS]
#
# Needs: fio, qemu-nbd, nbdkit, bin/nbdring (make build).
set -euo pipefail
file=${TMPDIR:-/tmp}/nbdring-bench.img size=1G secs=10 rounds=2
while getopts f:s:t:r: o; do
  case $o in f) file=$OPTARG ;; s) size=$OPTARG ;; t) secs=$OPTARG ;; r) rounds=$OPTARG ;;
  *) echo "usage: $0 [-f FILE] [-s SIZE] [-t SECONDS] [-r ROUNDS]" >&2; exit 2 ;; esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
sockdir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$sockdir"' EXIT
if [ ! -s "$file" ]; then
  echo "writing $size of random data to $file" >&2
  fio --name=fill --filename="$file" --size="$size" --rw=write --bs=1M --direct=1 \
      --refill_buffers --output=/dev/null
fi
sock=$sockdir/s
clk=$(getconf CLK_TCK)

start_server() {
  rm -f "$sock"
  # Every server starts with a cold page cache: nbdkit's file plugin reads
  # through it, the other two use O_DIRECT.
  if [ -w /proc/sys/vm/drop_caches ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi
  case $1 in
    nbdring)  "$here/bin/nbdring" -listen "unix:$sock" "$file" 2>"$sockdir/log" & ;;
    qemu-nbd) qemu-nbd -f raw -k "$sock" --cache=none --aio=io_uring -e 8 -t "$file" \
                2>"$sockdir/log" & ;;
    nbdkit)   nbdkit -f -U "$sock" file "$file" 2>"$sockdir/log" & ;;
  esac
  pid=$!
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  [ -S "$sock" ] || { echo "$1 did not start:" >&2; cat "$sockdir/log" >&2; exit 1; }
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# workload: name rw bs iodepth jobs
workloads=("randread-4k-qd32 randread 4k 32 1" "randread-4k-qd32x2 randread 4k 32 2"
           "read-1M-qd8 read 1M 8 1")
printf '%-10s %-20s %5s %12s %10s %14s\n' server workload round IOPS MB/s cpu_us/op
for round in $(seq "$rounds"); do
  for server in nbdring qemu-nbd nbdkit; do
    start_server $server
    for w in "${workloads[@]}"; do
      set -- $w
      t0=$(cpu_ticks $pid)
      fio --name="$1" --ioengine=nbd --uri="nbd+unix:///?socket=$sock" --rw="$2" \
              --bs="$3" --iodepth="$4" --numjobs="$5" --group_reporting --time_based \
              --runtime="$secs" --size="$size" --output-format=json \
          --output="$sockdir/fio.json" >/dev/null
      t1=$(cpu_ticks $pid)
      /usr/bin/python3 -c '
import json, sys
ticks, clk, server, name, rnd, path = sys.argv[1:7]
j = json.load(open(path))["jobs"][0]["read"]
ops = j["total_ios"]
cpu_us = int(ticks) * 1e6 / int(clk) / max(ops, 1)
print("%-10s %-20s %5s %12.0f %10.1f %14.1f" % (server, name, rnd, j["iops"],
      j["bw_bytes"] / 1e6, cpu_us))' "$((t1 - t0))" "$clk" "$server" "$1" "$round" "$sockdir/fio.json"
    done
    kill $pid; wait $pid 2>/dev/null || true
  done
done
