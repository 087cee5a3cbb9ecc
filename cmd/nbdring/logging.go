package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
)

// newLogger builds the logger -log-format and -log-level ask for. json is
// slog's JSON handler, one object a line, for collectors. text is for
// people and journald: the message as written, then key=value attributes,
// so a line reads as it did before attributes existed.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil || !validLevel(level) {
		return nil, fmt.Errorf("-log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(&textHandler{w: w, mu: &sync.Mutex{}, level: lv}), nil
	}
	return nil, fmt.Errorf("-log-format %q: want text or json", format)
}

// validLevel keeps -log-level to the four names: slog also takes
// "info+2" and the like, which is not worth documenting.
func validLevel(s string) bool {
	switch strings.ToLower(s) {
	case "debug", "info", "warn", "error":
		return true
	}
	return false
}

// setLogger makes l the default for slog and for the log package (which
// cmd's older lines and libraries use).
func setLogger(l *slog.Logger) {
	slog.SetDefault(l)
	log.SetFlags(0)
}

// textHandler writes "nbdring: 2006/01/02 15:04:05.000000 LEVEL msg k=v".
type textHandler struct {
	w     io.Writer
	mu    *sync.Mutex // shared by handlers derived with WithAttrs
	level slog.Level
	pre   string // attributes from WithAttrs, already formatted
	group string // key prefix from WithGroup
}

func (h *textHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *textHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString("nbdring: ")
	t := r.Time
	if t.IsZero() {
		t = time.Now()
	}
	b.WriteString(t.Format("2006/01/02 15:04:05.000000 "))
	b.WriteString(r.Level.String())
	b.WriteByte(' ')
	// A message is one line: a newline from an error text would let one
	// record pass for two.
	b.WriteString(strings.ReplaceAll(r.Message, "\n", `\n`))
	b.WriteString(h.pre)
	r.Attrs(func(a slog.Attr) bool {
		appendAttr(&b, h.group, a)
		return true
	})
	b.WriteByte('\n')
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := io.WriteString(h.w, b.String())
	return err
}

func (h *textHandler) WithAttrs(as []slog.Attr) slog.Handler {
	var b strings.Builder
	for _, a := range as {
		appendAttr(&b, h.group, a)
	}
	h2 := *h
	h2.pre += b.String()
	return &h2
}

func (h *textHandler) WithGroup(name string) slog.Handler {
	h2 := *h
	h2.group += name + "."
	return &h2
}

// appendAttr writes " key=value", quoting a value that has spaces, quotes,
// '=' or control characters, as logfmt does.
func appendAttr(b *strings.Builder, group string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return
	}
	if a.Value.Kind() == slog.KindGroup {
		for _, g := range a.Value.Group() {
			appendAttr(b, group+a.Key+".", g)
		}
		return
	}
	b.WriteByte(' ')
	b.WriteString(group + a.Key)
	b.WriteByte('=')
	v := a.Value.String()
	if v == "" || strings.ContainsAny(v, " \"=\\") || strings.IndexFunc(v, isControl) >= 0 {
		v = strconv.Quote(v)
	}
	b.WriteString(v)
}

func isControl(r rune) bool { return r < ' ' || r == 0x7f }
