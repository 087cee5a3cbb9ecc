package main

// -config FILE: listen addresses and exports in TOML, decoded by
// github.com/BurntSushi/toml. Every mistake is reported as FILE:LINE: and
// names the key; unknown keys are mistakes, never silently ignored.

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/nbdring/nbdring/engine"
)

// fileConfig is the file's shape. Keys are kebab-case, as nbdring's flags.
type fileConfig struct {
	Listen []string      `toml:"listen"`
	Export []exportTable `toml:"export"`
}

// exportTable is one [[export]].
type exportTable struct {
	Name        string `toml:"name"`
	Path        string `toml:"path"`
	Description string `toml:"description"`
	ReadOnly    bool   `toml:"read-only"`
	// Trim: "honour" (the default: punch a hole, discard on a device) or
	// "ignore" (qemu-nbd --discard=ignore: TRIM still advertised, answered
	// with success, data left in place).
	Trim string `toml:"trim"`
	// Allow: networks (CIDR or address) this export is served to; a TCP
	// client from elsewhere does not see it (ExportConfig.Allow).
	Allow []string `toml:"allow"`
	// TLSRequired serves the export only over TLS (ExportConfig.TLSOnly;
	// needs -tls on).
	TLSRequired bool `toml:"tls-required"`
	// MaxIOPS and MaxBandwidth limit the export over all its connections
	// (engine/qos.go): requests per second, and bytes per second as
	// "SIZE" (K, M, G: powers of 1024).
	MaxIOPS      int64  `toml:"max-iops"`
	MaxBandwidth string `toml:"max-bandwidth"`
}

// serveConfig is what -config (or the flags) resolve to.
type serveConfig struct {
	listen  []string // empty: -listen (or socket activation) decides
	exports []engine.ExportConfig
	// where names each export's path in the file ("FILE:LINE: key
	// export.path (...)"), so an export that fails to open is found there;
	// nil for EXPORT arguments.
	where    []string
	tlsWhere []string // the same for tls-required
}

// configError is one mistake in a configuration file.
type configError struct {
	file string
	line int    // 0: the file as a whole
	key  string // "" for a syntax error
	msg  string
}

func (e *configError) Error() string {
	where := e.file
	if e.line > 0 {
		where += ":" + strconv.Itoa(e.line)
	}
	if e.key == "" {
		return where + ": " + e.msg
	}
	return fmt.Sprintf("%s: key %s: %s", where, e.key, e.msg)
}

// loadConfig reads and checks the configuration file at path.
func loadConfig(path string) (serveConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return serveConfig{}, fmt.Errorf("-config: %w", err)
	}
	return parseConfig(path, data)
}

// parseConfig decodes data (read from file) and checks every value.
func parseConfig(file string, data []byte) (serveConfig, error) {
	var fc fileConfig
	md, err := toml.NewDecoder(strings.NewReader(string(data))).Decode(&fc)
	if err != nil {
		return serveConfig{}, decodeError(file, err)
	}
	loc := newLocator(data)
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0]
		line, idx := loc.line(k)
		key := k.String()
		if len(k) > 1 && k[0] == "export" {
			key += fmt.Sprintf(" (export %d)", idx+1)
		}
		return serveConfig{}, &configError{file: file, line: line, key: key,
			msg: "unknown key; the keys are listen, and in [[export]]: name, path, " +
				"description, read-only, trim, allow, tls-required, max-iops, max-bandwidth"}
	}
	if len(fc.Export) == 0 {
		return serveConfig{}, &configError{file: file, key: "export", msg: "no [[export]] " +
			"table: describe at least one export (see service/nbdring.toml)"}
	}
	var sc serveConfig
	for i, l := range fc.Listen {
		if err := checkListen(l); err != nil {
			line, _ := loc.line(toml.Key{"listen"})
			return serveConfig{}, &configError{file: file, line: line,
				key: fmt.Sprintf("listen (entry %d)", i+1), msg: err.Error()}
		}
		sc.listen = append(sc.listen, l)
	}
	names := map[string]int{}
	for i, x := range fc.Export {
		bad := func(key, format string, args ...any) error {
			what := fmt.Sprintf("export.%s (export %d, name %q)", key, i+1, x.Name)
			return &configError{file: file, line: loc.exportLine(i, key), key: what,
				msg: fmt.Sprintf(format, args...)}
		}
		ec, err := x.exportConfig(bad)
		if err != nil {
			return serveConfig{}, err
		}
		if j, dup := names[x.Name]; dup {
			return serveConfig{}, bad("name", "export %d has this name already; names "+
				"must differ (\"\" is the default export)", j+1)
		}
		names[x.Name] = i
		sc.exports = append(sc.exports, ec)
		sc.where = append(sc.where, bad("path", "").Error())
		sc.tlsWhere = append(sc.tlsWhere, bad("tls-required", "").Error())
	}
	return sc, nil
}

// exportConfig checks one [[export]]; bad reports a mistake in a key.
func (x exportTable) exportConfig(bad func(key, format string, args ...any) error) (
	engine.ExportConfig, error) {
	ec := engine.ExportConfig{Name: x.Name, Path: x.Path, Description: x.Description,
		ReadOnly: x.ReadOnly}
	if x.Path == "" {
		return ec, bad("path", "missing or empty: every export needs the file or block "+
			"device it serves")
	}
	switch x.Trim {
	case "", "honour":
	case "ignore":
		ec.TrimIgnore = true
	default:
		return ec, bad("trim", "%q: want \"honour\" (punch holes, discard) or \"ignore\" "+
			"(TRIM succeeds, data stays)", x.Trim)
	}
	for _, a := range x.Allow {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			ip, err2 := netip.ParseAddr(a)
			if err2 != nil {
				return ec, bad("allow", "%q is neither a network (10.0.0.0/8, fd00::/8) "+
					"nor an address", a)
			}
			p = netip.PrefixFrom(ip, ip.BitLen())
		}
		ec.Allow = append(ec.Allow, p.Masked())
	}
	ec.TLSOnly = x.TLSRequired
	if x.MaxIOPS < 0 {
		return ec, bad("max-iops", "%d: want requests per second, 1 or more (leave it "+
			"out for no limit)", x.MaxIOPS)
	}
	ec.MaxIOPS = uint64(x.MaxIOPS)
	if x.MaxBandwidth != "" {
		n, err := parseSize(x.MaxBandwidth)
		if err != nil || n == 0 {
			return ec, bad("max-bandwidth", "%q: want bytes per second such as \"20M\" "+
				"(K, M and G are powers of 1024)", x.MaxBandwidth)
		}
		ec.MaxBandwidth = n
	}
	return ec, nil
}

// parseSize reads "N", "NK", "NM" or "NG" (powers of 1024).
func parseSize(s string) (uint64, error) {
	shift := 0
	switch strings.ToUpper(s[len(s)-1:]) {
	case "K":
		shift = 10
	case "M":
		shift = 20
	case "G":
		shift = 30
	}
	if shift > 0 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > (1<<63)>>shift {
		return 0, errors.New("not a size")
	}
	return n << shift, nil
}

// typeErrorRe matches the decoder's type mismatch ("toml: line 3 (last key
// "export.read-only"): incompatible types: ..."), which is a plain error,
// not a ParseError; the format is pinned by the go.mod version and the
// unit tests.
var typeErrorRe = regexp.MustCompile(`^toml: line (\d+) \(last key "(.*?)"\): (.*)$`)

// decodeError turns the decoder's error into FILE:LINE: key K: message.
func decodeError(file string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		ce := &configError{file: file, line: pe.Position.Line, msg: pe.Message}
		if pe.LastKey != "" {
			ce.key = pe.LastKey
		}
		return ce
	}
	if m := typeErrorRe.FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &configError{file: file, line: line, key: m[2], msg: m[3]}
	}
	return &configError{file: file, msg: err.Error()}
}

// locator finds the line a key was written on. The decoder keeps key
// positions to itself (MetaData has none for callers), so this walks the
// lines for the forms the documented file uses: table headers ([t] and
// [[t]]) and "key = value" lines with bare or quoted keys. A key written
// another way (dotted, inside an inline table) is placed at its table's
// header line, or at 0 (the file as a whole) when even that is unknown.
type locator struct {
	lines []string
}

func newLocator(data []byte) locator {
	return locator{lines: strings.Split(string(data), "\n")}
}

var (
	headerRe = regexp.MustCompile(`^\s*(\[\[?)\s*([A-Za-z0-9_."-]+?)\s*\]\]?\s*(#.*)?$`)
	keyRe    = regexp.MustCompile(`^\s*("([^"]*)"|'([^']*)'|[A-Za-z0-9_-]+)\s*=`)
)

// scan calls f with each line number, the table the line is in (its
// header's name and, for [[t]], how many [[t]] came before: the index),
// and the key the line assigns ("" when none).
func (l locator) scan(f func(line int, table string, index int, key string) bool) {
	table, index := "", 0
	count := map[string]int{}
	for i, s := range l.lines {
		if m := headerRe.FindStringSubmatch(s); m != nil {
			table = strings.ReplaceAll(m[2], `"`, "")
			index = 0
			if m[1] == "[[" {
				index = count[table]
				count[table]++
			}
			if !f(i+1, table, index, "") {
				return
			}
			continue
		}
		if m := keyRe.FindStringSubmatch(s); m != nil {
			k := m[1]
			if m[2] != "" || m[3] != "" {
				k = m[2] + m[3]
			}
			if !f(i+1, table, index, k) {
				return
			}
		}
	}
}

// line is where key k (as MetaData spells it) was first written: its
// "key =" line, or its own [header] when k is a table; and, in an array
// of tables, which element (0-based) holds it.
func (l locator) line(k toml.Key) (int, int) {
	table, key, whole := strings.Join(k[:len(k)-1], "."), k[len(k)-1], k.String()
	found, header, index := 0, 0, 0
	l.scan(func(line int, t string, idx int, lk string) bool {
		switch {
		case lk == "" && t == whole:
			found = line
		case lk == "" && t == table && header == 0:
			header = line
		case lk == key && t == table:
			found, index = line, idx
		}
		return found == 0
	})
	if found == 0 {
		return header, 0
	}
	return found, index
}

// exportLine is where key was written in the i-th [[export]] (0-based),
// or that table's header when the key is missing from it.
func (l locator) exportLine(i int, key string) int {
	found, header := 0, 0
	l.scan(func(line int, t string, idx int, lk string) bool {
		if t == "export" && idx == i {
			if lk == "" && header == 0 {
				header = line
			}
			if lk == key {
				found = line
			}
		}
		return found == 0
	})
	if found == 0 {
		return header
	}
	return found
}
