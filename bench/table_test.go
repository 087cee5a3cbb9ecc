package bench

import (
	"encoding/xml"
	"strings"
	"testing"
	"time"
)

var tableRows = []Row{
	{Server: "nbdring", Workload: "randread:4k:32:1", IOPS: 40000, ServerCPUUsPerOp: 13},
	{Server: "qemu-nbd", Workload: "randread:4k:32:1", IOPS: 20000, ServerCPUUsPerOp: 40},
	{Server: "nbdring", Workload: "read:1M:8:1", IOPS: 500, BytesPerSec: 524e6},
	{Server: "qemu-nbd", Workload: "read:1M:8:1", IOPS: 750, BytesPerSec: 786e6},
}

func TestWriteTableRatios(t *testing.T) {
	var b strings.Builder
	WriteTable(&b, tableRows)
	lines := strings.Split(b.String(), "\n")
	if len(lines) < 4 || !strings.Contains(lines[0], "nbdring") ||
		!strings.Contains(lines[0], "qemu-nbd") {
		t.Fatalf("table:\n%s", b.String())
	}
	if !strings.Contains(lines[2], "0.50") || !strings.Contains(lines[3], "1.50") {
		t.Fatalf("ratios to nbdring missing:\n%s", b.String())
	}
}

func TestWriteSVGIsXML(t *testing.T) {
	var b strings.Builder
	WriteSVG(&b, tableRows, "machine <x> & y")
	d := xml.NewDecoder(strings.NewReader(b.String()))
	rects := 0
	for {
		tok, err := d.Token()
		if err != nil {
			if err.Error() != "EOF" {
				t.Fatalf("not well-formed XML: %v", err)
			}
			break
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "rect" {
			rects++
		}
	}
	if rects != 4+2 { // a bar per row, a legend swatch per server
		t.Fatalf("%d rects, want 6", rects)
	}
}

func TestMedianAndParseWorkloads(t *testing.T) {
	r := median("s", "w", "nbdbench", []Result{{IOPS: 3}, {IOPS: 1}, {IOPS: 100}})
	if r.IOPS != 3 || len(r.RoundsIOPS) != 3 {
		t.Fatalf("median %+v", r)
	}
	if r := median("s", "w", "", []Result{{IOPS: 2}, {IOPS: 4}}); r.IOPS != 3 {
		t.Fatalf("even median %v", r.IOPS)
	}
	ws, err := ParseWorkloads("randread:4k:32:1,read:1M:8:2", time.Second)
	if err != nil || len(ws) != 2 || ws[1].BS != 1<<20 || ws[1].Conns != 2 ||
		ws[0].Workload() != "randread:4k:32:1" {
		t.Fatalf("%v %+v", err, ws)
	}
	for _, bad := range []string{"randread:4k:32", "scan:4k:1:1", "read:4x:1:1"} {
		if _, err := ParseWorkloads(bad, time.Second); err == nil {
			t.Errorf("ParseWorkloads(%q) accepted", bad)
		}
	}
}
