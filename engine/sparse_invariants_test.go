//go:build invariants

package engine

import (
	"strings"
	"testing"

	"github.com/nbdring/nbdring/wire"
)

// TestCheckSegmentsPanics: under invariants, a READ reply planned with an
// empty, overlapping or short chunk panics where it is built (replyRead),
// before a byte of it reaches the client.
func TestCheckSegmentsPanics(t *testing.T) {
	req := wire.Request{Type: wire.CmdRead, Offset: 8192, Length: 8192}
	for _, c := range []struct {
		name string
		segs []segment
		want string // "" : no panic
	}{
		{"data then hole", []segment{{8192, 4096, false}, {12288, 4096, true}}, ""},
		{"empty data chunk", []segment{{8192, 0, false}, {8192, 8192, true}},
			"empty READ chunk"},
		{"overlap", []segment{{8192, 8192, false}, {12288, 4096, true}},
			"overlap or leave a gap"},
		{"gap", []segment{{8192, 2048, false}, {12288, 4096, true}},
			"overlap or leave a gap"},
		{"short", []segment{{8192, 4096, false}}, "do not cover the request"},
	} {
		t.Run(c.name, func(t *testing.T) {
			sl := &slot{req: req, nsegs: len(c.segs)}
			copy(sl.segs[:], c.segs)
			got := func() (msg string) {
				defer func() {
					if r := recover(); r != nil {
						msg, _ = r.(string)
						if msg == "" {
							msg = "panic"
						}
					}
				}()
				checkSegments(sl)
				return ""
			}()
			if c.want == "" && got != "" || !strings.Contains(got, c.want) {
				t.Errorf("checkSegments(%v): panic %q, want %q", c.segs, got, c.want)
			}
		})
	}
}
