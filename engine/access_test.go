package engine

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseAllowTable(t *testing.T) {
	for _, c := range []struct {
		rules  string
		addr   net.Addr
		allow  bool
		badErr string // a parse error containing this
	}{
		{"127.0.0.0/8", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 9)}, true, ""},
		{"127.0.0.0/8", &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1)}, false, ""},
		{"10.0.0.1", &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1)}, true, ""},
		{"10.0.0.1", &net.TCPAddr{IP: net.IPv4(10, 0, 0, 2)}, false, ""},
		{"::1/128", &net.TCPAddr{IP: net.IPv6loopback}, true, ""},
		{"127.0.0.1", &net.TCPAddr{IP: net.ParseIP("::ffff:127.0.0.1")}, true, ""},
		{"10.0.0.0/8, 192.0.2.0/24", &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7)}, true, ""},
		{"10.0.0.0/8", &net.UnixAddr{Name: "@", Net: "unix"}, true, ""}, // file mode decides
		{"subject:CN=a", &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1)}, true, ""},
		{"host1", nil, false, "not a CIDR"},
		{"subject:XX=a", nil, false, "K one of"},
		{"subject:CN=", nil, false, "K one of"},
		{" , ", nil, false, "names no rule"},
	} {
		a, err := ParseAllow(c.rules)
		if c.badErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.badErr) {
				t.Errorf("ParseAllow(%q): %v, want an error with %q", c.rules, err, c.badErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("ParseAllow(%q): %v", c.rules, err)
		}
		if got := a.AllowAddr(c.addr); got != c.allow {
			t.Errorf("-allow %q, %v: %v, want %v", c.rules, c.addr, got, c.allow)
		}
	}
}

func TestAllowSubject(t *testing.T) {
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: "host1",
		Organization: []string{"lab", "ops"}}}
	for _, c := range []struct {
		rules string
		want  bool
	}{
		{"subject:CN=host1", true},
		{"subject:CN=host2", false},
		{"subject:CN=host2,subject:CN=host1", true},
		{"subject:CN=host1+O=ops", true},
		{"subject:CN=host1+O=dev", false},
		{"subject:CN=Host1", false}, // exact
		{"127.0.0.1", true},         // no subject rule: any certificate
	} {
		a, err := ParseAllow(c.rules)
		if err != nil {
			t.Fatal(err)
		}
		if got := a.AllowSubject(cert); got != c.want {
			t.Errorf("-allow %q: %v, want %v", c.rules, got, c.want)
		}
	}
	a, _ := ParseAllow("subject:CN=host1")
	if a.AllowSubject(nil) {
		t.Error("no certificate passed a subject rule")
	}
}

func TestGatePerAddress(t *testing.T) {
	g := gate{byAddr: map[netip.Addr]int{}}
	a := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
	b := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}
	var held []netip.Addr
	for i := 0; i < handshakesPerAddrMax; i++ {
		ip, why := g.enter(a)
		if why != "" {
			t.Fatalf("handshake %d from a refused: %s", i, why)
		}
		held = append(held, ip)
	}
	if _, why := g.enter(a); !strings.Contains(why, "from 127.0.0.1") {
		t.Fatalf("handshake %d from one address: %q, want a refusal", handshakesPerAddrMax+1,
			why)
	}
	ipb, why := g.enter(b)
	if why != "" {
		t.Fatalf("another address refused: %s", why)
	}
	g.leave(ipb)
	g.leave(held[0])
	if _, why := g.enter(a); why != "" {
		t.Fatalf("a slot freed by leave was not reusable: %s", why)
	}
	// The total cap, from many addresses (and Unix sockets, which have none).
	g = gate{byAddr: map[netip.Addr]int{}}
	for i := 0; i < handshakesMax; i++ {
		if _, why := g.enter(&net.UnixAddr{Name: "@", Net: "unix"}); why != "" {
			t.Fatalf("handshake %d refused: %s", i, why)
		}
	}
	if _, why := g.enter(b); !strings.Contains(why, "handshakes already") {
		t.Fatalf("past handshakesMax: %q", why)
	}
}

func TestLoadTLSErrorsNameTheFile(t *testing.T) {
	dir, _ := testPKI(t)
	if _, err := LoadTLS(dir, true); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		remove, want string
		verify       bool
	}{
		{tlsKeyFile, tlsKeyFile, false},
		{tlsCertFile, tlsCertFile, false},
		{tlsCAFile, "-tls-verify-peer needs the CA", true},
	} {
		d := t.TempDir()
		for _, f := range []string{tlsCAFile, tlsCertFile, tlsKeyFile} {
			if f == c.remove {
				continue
			}
			b, _ := os.ReadFile(filepath.Join(dir, f))
			os.WriteFile(filepath.Join(d, f), b, 0o600)
		}
		if _, err := LoadTLS(d, c.verify); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("without %s: %v, want %q", c.remove, err, c.want)
		}
	}
	// A CRL not signed by the CA is refused at start.
	os.WriteFile(filepath.Join(dir, tlsCRLFile), []byte("junk"), 0o600)
	if _, err := LoadTLS(dir, true); err == nil || !strings.Contains(err.Error(), tlsCRLFile) {
		t.Errorf("junk CRL: %v", err)
	}
}
