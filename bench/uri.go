package bench

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/nbdring/nbdring/wire"
)

// Target is where an NBD URI points (doc/uri.md): nbd://HOST[:PORT]/NAME,
// nbd+unix:///NAME?socket=PATH, and their TLS forms nbds:// and
// nbds+unix:// (TLS required: a server that refuses it fails the
// connection).
type Target struct {
	Network string // "tcp" or "unix"
	Addr    string
	Export  string
	TLS     *tls.Config // nil: plaintext
}

// ParseURI parses the URI forms nbdbench speaks. TLS query parameters:
// tls-certificates=DIR (ca-cert.pem, and client-cert.pem with
// client-key.pem if present: libnbd's layout; without it the system's
// CAs), tls-hostname=NAME (the name the server's certificate must carry;
// default the URI's host, or localhost for a Unix socket) and
// tls-verify-peer=false.
func ParseURI(s string) (Target, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Target{}, fmt.Errorf("NBD URI %q: %w", s, err)
	}
	name := strings.TrimPrefix(u.Path, "/")
	var t Target
	switch u.Scheme {
	case "nbd", "nbds":
		host := u.Host
		if host == "" {
			return Target{}, fmt.Errorf("NBD URI %q has no host: use %s://HOST[:PORT]/NAME",
				s, u.Scheme)
		}
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "10809")
		}
		t = Target{Network: "tcp", Addr: host, Export: name}
	case "nbd+unix", "nbds+unix":
		sock := u.Query().Get("socket")
		if sock == "" {
			return Target{}, fmt.Errorf("NBD URI %q lacks ?socket=PATH", s)
		}
		t = Target{Network: "unix", Addr: sock, Export: name}
	default:
		return Target{}, fmt.Errorf("NBD URI %q: scheme %q is not nbd, nbds, nbd+unix or "+
			"nbds+unix", s, u.Scheme)
	}
	if strings.HasPrefix(u.Scheme, "nbds") {
		if t.TLS, err = clientTLS(u); err != nil {
			return Target{}, fmt.Errorf("NBD URI %q: %w", s, err)
		}
	}
	return t, nil
}

func clientTLS(u *url.URL) (*tls.Config, error) {
	q := u.Query()
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: q.Get("tls-hostname")}
	if cfg.ServerName == "" {
		cfg.ServerName = u.Hostname()
	}
	if cfg.ServerName == "" {
		cfg.ServerName = "localhost"
	}
	switch v := q.Get("tls-verify-peer"); v {
	case "", "true", "1":
	case "false", "0":
		cfg.InsecureSkipVerify = true
	default:
		return nil, fmt.Errorf("tls-verify-peer=%q: want true or false", v)
	}
	dir := q.Get("tls-certificates")
	if dir == "" {
		return cfg, nil // the system's CAs
	}
	caPath := filepath.Join(dir, "ca-cert.pem")
	ca, err := os.ReadFile(caPath)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w (tls-certificates=DIR needs the CA that signed "+
			"the server's certificate)", caPath, err)
	}
	cfg.RootCAs = x509.NewCertPool()
	if !cfg.RootCAs.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caPath)
	}
	certPath, keyPath := filepath.Join(dir, "client-cert.pem"), filepath.Join(dir, "client-key.pem")
	if _, err := os.Stat(certPath); errors.Is(err, os.ErrNotExist) {
		return cfg, nil // no client certificate
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, fmt.Errorf("load client certificate %s and key %s: %w", certPath, keyPath,
			err)
	}
	cfg.Certificates = []tls.Certificate{cert}
	return cfg, nil
}

// Handshake negotiates o on c, through TLS for an nbds target; the
// returned connection (c, or TLS over it) carries the transmission phase.
func (t Target) Handshake(c net.Conn, o wire.ClientOptions) (net.Conn, wire.ClientExport, error) {
	conn := c
	if t.TLS != nil {
		o.TLS = func(rw io.ReadWriter) (io.ReadWriter, error) {
			tc := tls.Client(c, t.TLS)
			conn = tc
			return tc, tc.Handshake()
		}
	}
	ex, err := wire.ClientHandshake(c, o)
	return conn, ex, err
}
