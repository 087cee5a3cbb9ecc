#!/usr/bin/env bash
# Cross-check nbdbench against fio's nbd engine on the same nbdring server:
# one shard (pinned by the engine to the first CPU) and each client pinned
# to another CPU, 4k random requests at QD32 on one connection. Clients take
# turns within a round, in reverse order every other round (A B, B A, ...),
# so the machine's drift does not favour one. Each line gives a client's
# IOPS, the disk's own latency from /sys/block/DEV/stat (when the file is
# on a block device), and server and client CPU per request; the summary
# gives medians and the median of the per-round ratios to fio.
#
#   bench/crosscheck.sh [-f FILE] [-t SECONDS] [-r ROUNDS] [-w randread|randwrite] \
#       [-c CLIENT_CPU] CLIENT...
#
# CLIENT is fio, or bN for nbdbench -batch N (e.g. b1 b8 fio).
# Needs: fio, taskset, /usr/bin/time, /usr/bin/python3, bin/nbdring and
# bin/nbdbench (make build).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
file=$here/var/bench.img secs=3 rounds=6 rw=randread ccpu=1
while getopts f:t:r:w:c: o; do
  case $o in f) file=$OPTARG ;; t) secs=$OPTARG ;; r) rounds=$OPTARG ;; w) rw=$OPTARG ;;
  c) ccpu=$OPTARG ;;
  *) echo "usage: $0 [-f FILE] [-t SECONDS] [-r ROUNDS] [-w RW] [-c CPU] CLIENT..." >&2
     exit 2 ;; esac
done
shift $((OPTIND - 1))
clients=("$@")
[ ${#clients[@]} -gt 0 ] || clients=(b1 fio)
[ -f "$file" ] || { echo "$file does not exist: run make compare once, or pass -f" >&2; exit 2; }
case $rw in randread | randwrite) ;; *) echo "-w: randread or randwrite" >&2; exit 2 ;; esac
[[ $secs =~ ^[1-9][0-9]*$ ]] || { echo "-t $secs: whole seconds (fio takes no fraction)" >&2; exit 2; }
for c in "${clients[@]}"; do
  [[ $c == fio || $c =~ ^b[0-9]+$ ]] || { echo "client $c: use fio or bN (nbdbench -batch N)" >&2; exit 2; }
  [ "$(printf '%s\n' "${clients[@]}" | grep -cx -- "$c")" = 1 ] || { echo "client $c is named twice" >&2; exit 2; }
done
for tool in fio taskset /usr/bin/time /usr/bin/python3 "$here/bin/nbdring" "$here/bin/nbdbench"; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (make build; apt-get install fio time)" >&2; exit 2; }
done

# The disk under the file, for its own request counters (none on tmpfs).
src=$(df --output=source "$file" | tail -1)
dev=${src##*/}
if [ ! -r "/sys/block/$dev/stat" ]; then # a partition: its disk
  dev=$(lsblk -no pkname "$src" 2>/dev/null | head -1 || true)
  [ -n "$dev" ] && [ -r "/sys/block/$dev/stat" ] || dev=""
fi
disk() { # requests and milliseconds of the direction measured
  if [ -z "$dev" ]; then echo 0 0; return; fi
  awk -v w="$rw" '{ if (w == "randwrite") print $5, $8; else print $1, $4 }' "/sys/block/$dev/stat"
}
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

tmp=$(mktemp -d)
trap 'kill "$spid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
sock=$tmp/sock uri="nbd+unix:///?socket=$tmp/sock"
"$here/bin/nbdring" -shards 1 -listen "unix:$sock" "$file" 2>"$tmp/log" &
spid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || { echo "nbdring did not start:" >&2; cat "$tmp/log" >&2; exit 1; }

run_client() {
  case $1 in
    fio) /usr/bin/time -f "%U %S" -o "$tmp/time" taskset -c "$ccpu" fio --name=x --ioengine=nbd --uri="$uri" --rw="$rw" --bs=4k \
           --iodepth=32 --time_based --runtime="$secs" --size="$(stat -c %s "$file")" \
           --output-format=json --output="$tmp/out" >/dev/null
         /usr/bin/python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0][sys.argv[2]]
print(int(j["iops"]), j["total_ios"])' "$tmp/out" "${rw#rand}" ;;
    b[0-9]*) /usr/bin/time -f "%U %S" -o "$tmp/time" taskset -c "$ccpu" "$here/bin/nbdbench" run -uri "$uri" -rw "$rw" -bs 4k \
           -qd 32 -batch "${1#b}" -duration "${secs}s" -json >"$tmp/out"
         /usr/bin/python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))
print(int(j["iops"]), j["ops"])' "$tmp/out" ;;
    *) echo "client $1: use fio or bN" >&2; exit 2 ;;
  esac
}

for r in $(seq "$rounds"); do
  order=("${clients[@]}")
  if [ $((r % 2)) = 0 ]; then
    order=(); for ((i = ${#clients[@]} - 1; i >= 0; i--)); do order+=("${clients[i]}"); done
  fi
  line="round=$r"
  for c in "${order[@]}"; do
    read -r n0 ms0 < <(disk); s0=$(ticks "$spid")
    read -r iops ops < <(run_client "$c")
    read -r n1 ms1 < <(disk); s1=$(ticks "$spid")
    line+=$(/usr/bin/python3 -c 'import sys
c, iops, ops, dn, dms, st, ut, clk = sys.argv[1:9]
ops, dn = max(int(ops), 1), int(dn)
lat = "%dus" % (int(dms) * 1000 // dn) if dn else "-"
u, s = open(ut).read().split()[-2:]
print(" %s=%s,disk%s,srv%.1fus,cli%.1fus" % (c, iops, lat, int(st) * 1e6 / int(clk) / ops,
      (float(u) + float(s)) * 1e6 / ops))' "$c" "$iops" "$ops" "$((n1 - n0))" "$((ms1 - ms0))" \
      "$((s1 - s0))" "$tmp/time" "$(getconf CLK_TCK)")
  done
  echo "$line" | tee -a "$tmp/lines"
done

/usr/bin/python3 - "$tmp/lines" <<'EOF'
import re, statistics, sys
field = re.compile(r" (\w+)=(\d+),disk(\d+|-)(?:us)?,srv([\d.]+)us,cli([\d.]+)us")
rows = [{m[0]: m[1:] for m in field.findall(l)} for l in open(sys.argv[1])]
def med(k, i):
    v = [float(r[k][i]) for r in rows if r[k][i] != "-"]
    return statistics.median(v) if v else None
for k in rows[0]:
    disk = med(k, 1)
    line = "%-4s median %9.0f IOPS  disk %s  server %.1f us/op  client %.1f us/op" % (
        k, med(k, 0), "%.0f us" % disk if disk is not None else "-", med(k, 2), med(k, 3))
    if k != "fio" and "fio" in rows[0]:
        ratios = [int(r[k][0]) / int(r["fio"][0]) for r in rows if int(r["fio"][0]) > 0]
        if ratios:
            line += "  ratio to fio %.3f  won %d/%d" % (
                statistics.median(ratios), sum(x > 1 for x in ratios), len(ratios))
    print(line)
EOF
