package main

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// clientURI is the NBD URI (nbd_connect_uri(3) syntax) a client on this
// machine uses to reach export on the listener at addr. listen is the
// -listen value the listener came from ("" when socket-activated): a host
// name written there is kept, because it is what the operator chose; an
// IP literal or an empty host is replaced by the listener's address, whose
// port is the real one (also for port 0). A wildcard address (":P",
// "0.0.0.0:P", "[::]:P") becomes localhost: libnbd reads an empty host as
// localhost:10809, ignoring the port.
func clientURI(listen string, addr net.Addr, export string) string {
	switch a := addr.(type) {
	case *net.UnixAddr:
		return "nbd+unix:///" + uriEscape(export) + "?socket=" + uriEscape(a.Name)
	case *net.TCPAddr:
		host, _, err := net.SplitHostPort(listen)
		if err != nil || host == "" || net.ParseIP(host) != nil ||
			strings.Contains(host, "%") {
			host = uriHost(a)
		}
		u := "nbd://" + net.JoinHostPort(host, strconv.Itoa(a.Port))
		if export != "" {
			u += "/" + uriEscape(export)
		}
		return u
	}
	return fmt.Sprintf("nbd://%v", addr) // no other kind of listener exists
}

// uriHost is a's IP as a URI host: localhost for a wildcard address, the
// zone of a link-local IPv6 address escaped as RFC 6874 says.
func uriHost(a *net.TCPAddr) string {
	if a.IP == nil || a.IP.IsUnspecified() {
		return "localhost"
	}
	h := a.IP.String()
	if a.Zone != "" {
		h += "%25" + uriEscape(a.Zone)
	}
	return h
}

// uriEscape percent-encodes every byte of s outside RFC 3986's unreserved
// set and '/', so a name or path survives as one path or query component.
func uriEscape(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			strings.IndexByte("-._~/", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// uriExport is the export the printed URI names: the default export ""
// when there is one, else the first export given.
func uriExport(names []string) string {
	for _, n := range names {
		if n == "" {
			return ""
		}
	}
	if len(names) == 0 {
		return ""
	}
	return names[0]
}

// shellQuote quotes s for a POSIX shell when it holds anything but
// characters that are safe unquoted ('?' and '&' in Unix URIs are not).
func shellQuote(s string) string {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			strings.IndexByte("-._~/:@%+=,", c) >= 0) {
			return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
		}
	}
	return s
}
