package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoEngine holds nbdbench to being a black-box client: it links wire,
// bench and the CPU topology, never the server's engine or ring, so a
// benchmark cannot share the server's code paths or its bugs.
func TestNoEngine(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		switch pkg {
		case "github.com/nbdring/nbdring/engine", "github.com/nbdring/nbdring/ring":
			t.Errorf("nbdbench links %s; import engine/topology or wire instead", pkg)
		}
	}
}
