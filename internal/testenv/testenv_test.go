package testenv

import "testing"

func TestListed(t *testing.T) {
	for _, c := range []struct {
		list, what string
		want       bool
	}{
		{"", "root", false},
		{"all", "root", true},
		{"all", "zram", true},
		{"root,zram", "zram", true},
		{" root , fuse ", "fuse", true},
		{"root,zram", "fuse", false},
		{"rooted", "root", false},
	} {
		if got := Listed(c.list, c.what); got != c.want {
			t.Errorf("Listed(%q, %q) = %v, want %v", c.list, c.what, got, c.want)
		}
	}
}
