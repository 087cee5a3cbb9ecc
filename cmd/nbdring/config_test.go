package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nbdring/nbdring/engine"
)

// TestConfigValid: every key of the documented form lands in the right
// field, defaults apply where keys are left out, and the shipped example
// (service/nbdring.toml) parses.
func TestConfigValid(t *testing.T) {
	src := `# comment
listen = ["localhost:0", "unix:/tmp/nbd.sock"]

[[export]]
name = ""
path = "/srv/a.img"
description = "disk A"

[[export]]
name = "golden"
path = "/srv/g.img"
read-only = true
trim = "ignore"

[[export]]
"name" = "thin"   # a quoted key
path = '/srv/t.img'
trim = "honour"
allow = []
tls-required = true
`
	sc, err := parseConfig("n.toml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"localhost:0", "unix:/tmp/nbd.sock"}; !reflect.DeepEqual(sc.listen,
		want) {
		t.Errorf("listen = %q, want %q", sc.listen, want)
	}
	want := []engine.ExportConfig{
		{Name: "", Path: "/srv/a.img", Description: "disk A"},
		{Name: "golden", Path: "/srv/g.img", ReadOnly: true, TrimIgnore: true},
		{Name: "thin", Path: "/srv/t.img", TLSOnly: true},
	}
	if !reflect.DeepEqual(sc.exports, want) {
		t.Errorf("exports =\n%+v\nwant\n%+v", sc.exports, want)
	}
	ex, err := os.ReadFile(filepath.Join("..", "..", "service", "nbdring.toml"))
	if err != nil {
		t.Fatal(err)
	}
	// The example listens on /run/nbdring, which need not exist here.
	ex = []byte(strings.Replace(string(ex), "unix:/run/nbdring/nbd.sock",
		"unix:"+t.TempDir()+"/nbd.sock", 1))
	sc, err = parseConfig("service/nbdring.toml", ex)
	if err != nil {
		t.Fatalf("the shipped example: %v", err)
	}
	if len(sc.exports) != 3 || !sc.exports[1].ReadOnly || !sc.exports[2].TrimIgnore {
		t.Errorf("the shipped example: %+v", sc.exports)
	}
}

// TestConfigMistakes: each kind of mistake is an error that starts with
// FILE:LINE: and names the key, and says the thing to fix.
func TestConfigMistakes(t *testing.T) {
	cases := []struct {
		name, src string
		want      []string // the error starts with want[0]; contains the rest
	}{
		{"syntax: unterminated string", "[[export]]\npath = \"a.img\n",
			[]string{"f.toml:2: ", "newlines"}},
		{"syntax: no value", "[[export]]\n\npath =\n",
			[]string{"f.toml:3: "}},
		{"duplicate key", "[[export]]\npath = \"a\"\npath = \"b\"\n",
			[]string{"f.toml:3: ", "path"}},
		{"wrong type", "[[export]]\npath = \"a\"\n\nread-only = \"yes\"\n",
			[]string{"f.toml:4: key export.read-only: ", "string", "bool"}},
		{"listen not a list", "listen = \"localhost:1\"\n[[export]]\npath = \"a\"\n",
			[]string{"f.toml:1: key listen: "}},
		{"unknown key in export", "[[export]]\npath = \"a\"\n\n[[export]]\npath = \"b\"\n" +
			"readonly = true\n",
			[]string{"f.toml:6: key export.readonly (export 2): unknown key", "read-only"}},
		{"unknown top-level key", "shards = 2\n[[export]]\npath = \"a\"\n",
			[]string{"f.toml:1: key shards: unknown key"}},
		{"unknown table", "[[export]]\npath = \"a\"\n[server]\nport = 1\n",
			[]string{"f.toml:3: key server: unknown key"}},
		{"no exports", "listen = [\"localhost:1\"]\n",
			[]string{"f.toml: key export: no [[export]]"}},
		{"missing path", "[[export]]\npath = \"a\"\n[[export]]\nname = \"b\"\n",
			[]string{"f.toml:3: key export.path (export 2, name \"b\"): missing"}},
		{"bad trim", "[[export]]\npath = \"a\"\ntrim = \"discard\"\n",
			[]string{"f.toml:3: key export.trim (export 1, name \"\"): \"discard\"",
				"honour", "ignore"}},
		{"duplicate name", "[[export]]\nname = \"x\"\npath = \"a\"\n[[export]]\n" +
			"name = \"x\"\npath = \"b\"\n",
			[]string{"f.toml:5: key export.name (export 2, name \"x\"): export 1 has " +
				"this name"}},
		{"bad network", "[[export]]\npath = \"a\"\nallow = [\"10.0.0.0/33\"]\n",
			[]string{"f.toml:3: key export.allow (export 1, name \"\"): \"10.0.0.0/33\" " +
				"is neither a network"}},
		{"tls-required not a bool", "[[export]]\npath = \"a\"\n\ntls-required = 1\n",
			[]string{"f.toml:4: key export.tls-required: "}},
		{"listen without port", "listen = [\"localhost:1\",\n  \"localhost\"]\n" +
			"[[export]]\npath = \"a\"\n",
			[]string{"f.toml:1: key listen (entry 2): \"localhost\" has no port"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseConfig("f.toml", []byte(c.src))
			if err == nil {
				t.Fatalf("no error for:\n%s", c.src)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, c.want[0]) {
				t.Errorf("error %q does not start with %q", msg, c.want[0])
			}
			for _, w := range c.want[1:] {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
		})
	}
}

// TestLoadConfigMissingFile: a file that cannot be read names -config.
func TestLoadConfigMissingFile(t *testing.T) {
	_, err := loadConfig(filepath.Join(t.TempDir(), "none.toml"))
	if err == nil || !strings.Contains(err.Error(), "-config: ") ||
		!strings.Contains(err.Error(), "none.toml") {
		t.Fatalf("err = %v, want -config and the file named", err)
	}
}
