package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// buildVersion is nbdring's version as the build recorded it: the main
// module's version (a tag, or a pseudo-version when built from a checkout
// with VCS stamping), else the VCS revision (with "+modified" for a dirty
// tree), else "devel" (GOFLAGS=-buildvcs=false, a git worktree Go cannot
// read, or no build information at all).
func buildVersion(bi *debug.BuildInfo) string {
	if bi == nil {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if modified {
		rev += "+modified"
	}
	return rev
}

// versionText is what -version prints: nbdring's version, the Go toolchain
// that built it, and the module version of every dependency linked in.
func versionText(bi *debug.BuildInfo) string {
	var b strings.Builder
	fmt.Fprintf(&b, "nbdring %s\n", buildVersion(bi))
	goVersion := runtime.Version()
	if bi != nil && bi.GoVersion != "" {
		goVersion = bi.GoVersion
	}
	fmt.Fprintf(&b, "%s %s/%s\n", goVersion, runtime.GOOS, runtime.GOARCH)
	if bi == nil {
		return b.String()
	}
	for _, d := range bi.Deps {
		fmt.Fprintf(&b, "%s %s", d.Path, d.Version)
		if r := d.Replace; r != nil {
			fmt.Fprintf(&b, " => %s %s", r.Path, r.Version)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// readBuildInfo is debug.ReadBuildInfo, nil when the binary has none.
func readBuildInfo() *debug.BuildInfo {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return nil
	}
	return bi
}
