package bench

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// Target is where an NBD URI points (doc/uri.md): nbd://HOST[:PORT]/NAME
// or nbd+unix:///NAME?socket=PATH.
type Target struct {
	Network string // "tcp" or "unix"
	Addr    string
	Export  string
}

// ParseURI parses the two URI forms nbdbench speaks.
func ParseURI(s string) (Target, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Target{}, fmt.Errorf("NBD URI %q: %w", s, err)
	}
	name := strings.TrimPrefix(u.Path, "/")
	switch u.Scheme {
	case "nbd":
		host := u.Host
		if host == "" {
			return Target{}, fmt.Errorf("NBD URI %q has no host: use nbd://HOST[:PORT]/NAME", s)
		}
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "10809")
		}
		return Target{Network: "tcp", Addr: host, Export: name}, nil
	case "nbd+unix":
		sock := u.Query().Get("socket")
		if sock == "" {
			return Target{}, fmt.Errorf("NBD URI %q lacks ?socket=PATH", s)
		}
		return Target{Network: "unix", Addr: sock, Export: name}, nil
	}
	return Target{}, fmt.Errorf("NBD URI %q: scheme %q is not nbd or nbd+unix (TLS is "+
		"not supported)", s, u.Scheme)
}
