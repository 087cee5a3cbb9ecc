#!/usr/bin/python3
"""Reads nbdring's /metrics with the Prometheus project's own parser
(python3-prometheus-client) and checks what holds for any load: every
family the README lists, with its type and labels; names and labels as
Prometheus asks; histograms cumulative with +Inf equal to the count. It
prints the samples as JSON ([name, labels, value] rows) for the Go test to
compare with the load it ran. Usage: metrics.py URL"""

import json
import math
import re
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

# family (as the parser names it: counters without _total) -> type, labels
FAMILIES = {
    "nbdring_build_info": ("gauge", {"version", "goversion"}),
    "nbdring_requests": ("counter", {"command", "export"}),
    "nbdring_request_errors": ("counter", {"command", "export"}),
    "nbdring_request_bytes": ("counter", {"command", "export"}),
    "nbdring_request_duration_seconds": ("histogram", {"command"}),
    "nbdring_connections": ("gauge", {"export", "shard"}),
    "nbdring_handshakes": ("counter", {"result"}),
    "nbdring_shard_info": ("gauge", {"shard", "cpu"}),
    "nbdring_requests_in_flight": ("gauge", {"shard"}),
    "nbdring_arena_bytes_in_use": ("gauge", {"shard"}),
    "nbdring_kernel_ops_in_flight": ("gauge", {"shard"}),
    "nbdring_stale_completions": ("counter", {"shard"}),
    "nbdring_backpressure_waits": ("counter", {"shard"}),
    "nbdring_zerocopy_sends": ("counter", {"shard"}),
    "nbdring_zerocopy_copied": ("counter", {"shard"}),
    "nbdring_zerocopy_refused": ("counter", {"shard"}),
    "nbdring_zerocopy_bytes": ("counter", {"shard"}),
    "nbdring_zerocopy_disabled": ("counter", {"shard"}),
    "nbdring_inline_ops": ("counter", {"shard"}),
    "nbdring_iowq_punts": ("counter", {"reason", "shard"}),
    "nbdring_iowq_workers": ("gauge", set()),
    "nbdring_recvs": ("counter", {"shard"}),
    "nbdring_recv_buffers": ("counter", {"shard"}),
    "nbdring_recv_no_buffers": ("counter", {"shard"}),
    "nbdring_io_timeouts": ("counter", {"shard"}),
    "nbdring_recv_buffers_free": ("gauge", {"shard"}),
    "nbdring_ring_enters": ("counter", {"shard"}),
    "nbdring_ring_submissions": ("counter", {"shard"}),
    "nbdring_ring_completions": ("counter", {"shard"}),
    "nbdring_export_flush_failing": ("gauge", {"export"}),
    "nbdring_export_size_bytes": ("gauge", {"export"}),
    "nbdring_export_throttled_seconds": ("counter", {"export"}),
}
LABEL = re.compile(r"^[a-z][a-z0-9_]*$")


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def check_histogram(fam):
    series = {}
    for s in fam.samples:
        series.setdefault(s.labels.get("command"), []).append(s)
    for cmd, samples in series.items():
        buckets = [(float(s.labels["le"]), s.value) for s in samples
                   if s.name.endswith("_bucket")]
        count = [s.value for s in samples if s.name.endswith("_count")]
        total = [s.value for s in samples if s.name.endswith("_sum")]
        if len(count) != 1 or len(total) != 1 or not buckets:
            fail("histogram %s{command=%r}: want buckets, one _count, one _sum" %
                 (fam.name, cmd))
        les = [le for le, _ in buckets]
        if les != sorted(les) or les[-1] != math.inf:
            fail("%s{command=%r}: bucket bounds %s not ascending to +Inf" %
                 (fam.name, cmd, les))
        values = [v for _, v in buckets]
        if any(b < a for a, b in zip(values, values[1:])):
            fail("%s{command=%r}: buckets %s not cumulative" % (fam.name, cmd, values))
        if values[-1] != count[0]:
            fail("%s{command=%r}: +Inf bucket %d != count %d" %
                 (fam.name, cmd, values[-1], count[0]))
        if total[0] < 0 or (count[0] == 0 and total[0] != 0):
            fail("%s{command=%r}: sum %g with count %d" % (fam.name, cmd, total[0],
                                                          count[0]))


def main():
    with urllib.request.urlopen(sys.argv[1], timeout=10) as resp:
        ctype = resp.headers.get("Content-Type", "")
        text = resp.read().decode()
    if not ctype.startswith("text/plain; version=0.0.4"):
        fail("Content-Type %r, want the text format 0.0.4" % ctype)
    rows, seen = [], set()
    for fam in text_string_to_metric_families(text):
        if fam.name not in FAMILIES:
            fail("family %s is not in the README's list" % fam.name)
        typ, labels = FAMILIES[fam.name]
        if fam.type != typ:
            fail("%s is a %s, want %s" % (fam.name, fam.type, typ))
        if fam.name in seen:
            fail("family %s appears twice" % fam.name)
        seen.add(fam.name)
        if not fam.documentation:
            fail("%s has no HELP" % fam.name)
        for s in fam.samples:
            got = set(s.labels) - {"le"}
            if got != labels:
                fail("%s: labels %s, want %s" % (s.name, sorted(got), sorted(labels)))
            if typ == "counter" and not s.name.endswith("_total"):
                fail("counter sample %s lacks _total" % s.name)
            for k in s.labels:
                if not LABEL.match(k):
                    fail("%s: label %r is not lower_snake" % (s.name, k))
            if s.value < 0:
                fail("%s%s = %g is negative" % (s.name, s.labels, s.value))
            rows.append([s.name, s.labels, s.value])
        if typ == "histogram":
            check_histogram(fam)
    missing = set(FAMILIES) - seen
    if missing:
        fail("families missing: %s" % sorted(missing))
    json.dump(rows, sys.stdout)


main()
