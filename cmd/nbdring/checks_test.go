package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os/exec"
	"strings"
	"testing"
)

// TestCheckShards: more shards than usable CPUs is refused with the limit.
func TestCheckShards(t *testing.T) {
	usable := []int{0, 1}
	for _, n := range []int{0, 1, 2} {
		if err := checkShards(n, usable); err != nil {
			t.Errorf("-shards %d with 2 CPUs: %v", n, err)
		}
	}
	err := checkShards(3, usable)
	if err == nil || !strings.Contains(err.Error(), "at most -shards 2") ||
		!strings.Contains(err.Error(), "-shards 3") {
		t.Errorf("-shards 3 with 2 CPUs: %v, want the limit 2", err)
	}
	if err := checkShards(-1, usable); err == nil {
		t.Error("-shards -1 accepted")
	}
}

// TestCheckArenaMiB: the flag and the unit are named, and the nearest
// valid values suggested.
func TestCheckArenaMiB(t *testing.T) {
	for _, n := range []int{0, 4, 128, 256, 1024} {
		if err := checkArenaMiB(n); err != nil {
			t.Errorf("-arena-mib %d: %v", n, err)
		}
	}
	cases := []struct {
		n    int
		want []string
	}{
		{200, []string{"-arena-mib 200", "not a power of two", "128 or 256", "MiB"}},
		{2, []string{"-arena-mib 2", "below the minimum of 4 MiB", "or 0"}},
		{-1, []string{"-arena-mib -1", "below the minimum"}},
		{128 << 20, []string{"in MiB"}},
	}
	for _, c := range cases {
		err := checkArenaMiB(c.n)
		if err == nil {
			t.Errorf("-arena-mib %d accepted", c.n)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("-arena-mib %d: %q lacks %q", c.n, err, w)
			}
		}
	}
}

// TestCheckListen: each mistake gets the hint that fits it.
func TestCheckListen(t *testing.T) {
	dir := t.TempDir()
	for _, ok := range []string{"localhost:10809", ":0", "[::1]:0", "0.0.0.0:10809",
		"unix:" + dir + "/s.sock", "unix:rel.sock"} {
		if err := checkListen(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	cases := []struct{ addr, want string }{
		{"localhost", "has no port; add one: localhost:10809"},
		{"10.0.0.1", "has no port"},
		{"nbd://localhost:10809", "is a URI"},
		{"/run/nbd.sock", "unix:/run/nbd.sock"},
		{"localhost:http0", "is not a number"},
		{"localhost:70000", "is not a number from 0 to 65535"},
		{"::1:10809", "[::1]:10809"},
		{"unix:", "has no path"},
		{"unix:" + dir + "/no/such/dir/s.sock", "mkdir -p " + dir + "/no/such/dir"},
		{"unix:/" + strings.Repeat("x", 120), "at most 107"},
	}
	for _, c := range cases {
		err := checkListen(c.addr)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.addr, err, c.want)
		}
	}
}

// TestLoggerJSON: json lines are one object each, with the attributes.
func TestLoggerJSON(t *testing.T) {
	var b bytes.Buffer
	l, err := newLogger(&b, "json", "info")
	if err != nil {
		t.Fatal(err)
	}
	l.Debug("hidden")
	l.Info("connection", "client", "1.2.3.4:5", "shard", 1)
	var m map[string]any
	if err := json.Unmarshal(b.Bytes(), &m); err != nil {
		t.Fatalf("%q: %v", b.String(), err)
	}
	if m["msg"] != "connection" || m["client"] != "1.2.3.4:5" || m["shard"] != 1.0 {
		t.Errorf("record %v", m)
	}
}

// TestLoggerText: the message as written, then key=value, quoted when
// needed; one line per record even when the message has a newline; the
// level filters.
func TestLoggerText(t *testing.T) {
	var b bytes.Buffer
	l, err := newLogger(&b, "text", "warn")
	if err != nil {
		t.Fatal(err)
	}
	l.Info("hidden")
	l.With("shard", 2).Warn("send: broken pipe\nnext", "client", "a b", "export", "")
	out := b.String()
	if strings.Count(out, "\n") != 1 {
		t.Fatalf("want one line, got %q", out)
	}
	if !strings.HasPrefix(out, "nbdring: ") ||
		!strings.Contains(out, ` WARN send: broken pipe\nnext shard=2 client="a b" export=""`) {
		t.Errorf("line %q", out)
	}
}

// TestLoggerFlags: bad -log-format and -log-level values are refused.
func TestLoggerFlags(t *testing.T) {
	for _, c := range [][2]string{{"xml", "info"}, {"text", "verbose"}, {"json", "info+2"}} {
		if _, err := newLogger(&bytes.Buffer{}, c[0], c[1]); err == nil {
			t.Errorf("-log-format %s -log-level %s accepted", c[0], c[1])
		}
	}
	for _, lv := range []string{"debug", "info", "warn", "error", "WARN"} {
		l, err := newLogger(&bytes.Buffer{}, "text", lv)
		if err != nil {
			t.Errorf("-log-level %s: %v", lv, err)
		} else if lv == "error" && l.Enabled(context.Background(), slog.LevelWarn) {
			t.Error("-log-level error logs warnings")
		}
	}
}

// TestExitStatus: a command's status, or 128 + the signal that killed it.
func TestExitStatus(t *testing.T) {
	for _, c := range []struct {
		script string
		want   int
	}{{"exit 0", 0}, {"exit 3", 3}, {"kill -TERM $$", 143}, {"kill -KILL $$", 137}} {
		err := exec.Command("/bin/sh", "-c", c.script).Run()
		if got := exitStatus(err); got != c.want {
			t.Errorf("%s: status %d, want %d", c.script, got, c.want)
		}
	}
	if exitStatus(errors.New("start failed")) != 1 {
		t.Error("a non-exit error is not status 1")
	}
}
