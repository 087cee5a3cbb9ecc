#!/usr/bin/python3
"""Reads nbdring's /metrics twice, as the text format 0.0.4 and as
OpenMetrics (the Accept header a scraper sends for it), with the Prometheus
project's own parsers (python3-prometheus-client), and checks what holds
for any load: every nbdring_* family docs/metrics.md lists, with its type and
labels, and no other; the Go and process families dashboards expect next to
them; names and labels as Prometheus asks; histograms cumulative with +Inf
equal to the count; both formats carrying the same series, the OpenMetrics
one ending in "# EOF". It prints the text format's samples (nbdring_* and
LIBRARY) as JSON ([name, labels, value] rows) for the Go test to compare
with the load it ran. Usage: metrics.py URL"""

import json
import math
import re
import sys
import urllib.request

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families)
from prometheus_client.parser import text_string_to_metric_families

# family (as the parser names it: counters without _total) -> type, labels
FAMILIES = {
    "nbdring_build_info": ("gauge", {"version", "goversion"}),
    "nbdring_requests": ("counter", {"command", "export"}),
    "nbdring_request_errors": ("counter", {"command", "export"}),
    "nbdring_request_bytes": ("counter", {"command", "export"}),
    "nbdring_request_duration_seconds": ("histogram", {"command"}),
    "nbdring_request_receive_seconds": ("histogram", {"command"}),
    "nbdring_request_queue_seconds": ("histogram", {"command"}),
    "nbdring_request_device_seconds": ("histogram", {"command"}),
    "nbdring_request_send_seconds": ("histogram", {"command"}),
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
# Families the client library's process and Go collectors must bring (the
# ones dashboards chart first); the rest of theirs are not checked.
LIBRARY = {
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_cpu_seconds": "counter",
    "go_goroutines": "gauge",
    "go_threads": "gauge",
}
LIBRARY_PREFIXES = ("process_", "go_")
# The Go collector's go_memstats_alloc_bytes gauge and its
# go_memstats_alloc_bytes_total counter are one family name to a parser that
# strips _total (both of these do): client_golang issue 829, open.
ALLOC_CLASH = "go_memstats_alloc_bytes"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


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


def fetch(url, accept):
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers.get("Content-Type", ""), resp.read().decode()


def check_family(fam, rows):
    """Checks one nbdring_* family against FAMILIES; adds its samples."""
    typ, labels = FAMILIES[fam.name]
    if fam.type != typ:
        fail("%s is a %s, want %s" % (fam.name, fam.type, typ))
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


def check_page(families, what):
    """Checks one parsed page; returns the samples of its nbdring_*
    families and of those in LIBRARY as rows."""
    rows, seen = [], {}
    for fam in families:
        if fam.name in seen and fam.name != ALLOC_CLASH:
            fail("%s: family %s appears twice" % (what, fam.name))
        seen[fam.name] = fam.type
        if fam.name.startswith(LIBRARY_PREFIXES):
            if fam.name in LIBRARY:  # for the Go test to see their values
                rows.extend([s.name, s.labels, s.value] for s in fam.samples)
            continue
        if fam.name not in FAMILIES:
            fail("%s: family %s is not in the list docs/metrics.md has" % (what, fam.name))
        check_family(fam, rows)
    missing = set(FAMILIES) - set(seen)
    if missing:
        fail("%s: families missing: %s" % (what, sorted(missing)))
    for name, typ in LIBRARY.items():
        if seen.get(name) != typ:
            fail("%s: %s is %s, want a %s from the client library" %
                 (what, name, seen.get(name), typ))
    return rows


def without_alloc_counter(text):
    """In OpenMetrics the ALLOC_CLASH counter's metadata names the gauge's
    family again, which the strict parser refuses outright ("metadata after
    samples"). Drop that one block; any other clash still fails."""
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        if lines[i] == "# TYPE go_memstats_alloc_bytes counter" and out and \
                out[-1].startswith("# HELP go_memstats_alloc_bytes "):
            out.pop()
            i += 1
            while i < len(lines) and lines[i].startswith("go_memstats_alloc_bytes_total"):
                i += 1
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def main():
    url = sys.argv[1]
    ctype, text = fetch(url, None)
    if not ctype.startswith("text/plain; version=0.0.4"):
        fail("Content-Type %r, want the text format 0.0.4" % ctype)
    rows = check_page(text_string_to_metric_families(text), "text format")

    ctype, om = fetch(url, OPENMETRICS)
    if not ctype.startswith(OPENMETRICS):
        fail("Accept: %s got Content-Type %r" % (OPENMETRICS, ctype))
    if not om.endswith("\n# EOF\n"):
        fail("OpenMetrics page does not end with # EOF: ...%r" % om[-80:])
    om_rows = check_page(openmetrics_families(without_alloc_counter(om)), "OpenMetrics")
    # Both pages come from one collector: the same nbdring_* series (values
    # may move between the two scrapes; OpenMetrics spells le 1 as 1.0).
    def series(rs):
        return sorted((r[0], sorted((k, float(v) if k == "le" else v)
                                    for k, v in r[1].items())) for r in rs)
    if series(rows) != series(om_rows):
        fail("the text format and OpenMetrics pages carry different series")
    json.dump(rows, sys.stdout)


main()
