package engine

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCA signs certificates for TestLoadTLSVerifyPeer.
type testCA struct {
	cert   *x509.Certificate
	key    crypto.Signer
	serial int64
}

func newTestCA(t *testing.T, cn string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, serial: 1}
}

// issue signs a certificate for key with extended key usage eku, valid
// now unless expired.
func (ca *testCA) issue(t *testing.T, key crypto.Signer, eku x509.ExtKeyUsage,
	expired bool) tls.Certificate {
	t.Helper()
	ca.serial++
	from, to := time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	if expired {
		from, to = from.Add(-2*time.Hour), from
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(ca.serial),
		Subject: pkix.Name{CommonName: "client"}, NotBefore: from, NotAfter: to,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{eku},
		DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// serverDir writes ca-cert.pem, server-cert.pem and server-key.pem.
func (ca *testCA) serverDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srv := ca.issue(t, key, x509.ExtKeyUsageServerAuth, false)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	for name, blk := range map[string]*pemOut{
		tlsCAFile: {"CERTIFICATE", ca.cert.Raw}, tlsCertFile: {"CERTIFICATE", srv.Certificate[0]},
		tlsKeyFile: {"PRIVATE KEY", keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), blk.encode(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestLoadTLSVerifyPeer: under -tls-verify-peer the CertificateRequest
// names no CA (so GnuTLS presents RSA certificates under TLS 1.3: see
// verifyClient), and the server still refuses what RequireAndVerifyClientCert
// with the CA would: no certificate, another CA's, one not for client
// authentication, an expired one.
func TestLoadTLSVerifyPeer(t *testing.T) {
	ca := newTestCA(t, "engine CA")
	dir := ca.serverDir(t)
	cfg, err := LoadTLS(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	if !tlsVerifiesPeer(cfg) {
		t.Fatal("tlsVerifiesPeer(LoadTLS(dir, true)) is false: -allow subject: would refuse it")
	}
	if plain, _ := LoadTLS(dir, false); tlsVerifiesPeer(plain) {
		t.Fatal("tlsVerifiesPeer(LoadTLS(dir, false)) is true")
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	other := newTestCA(t, "other CA")
	for _, c := range []struct {
		name    string
		cert    *tls.Certificate
		version uint16
		refusal string // "": accepted
	}{
		{"ECDSA", ptr(ca.issue(t, ecKey, x509.ExtKeyUsageClientAuth, false)), 0, ""},
		{"RSA", ptr(ca.issue(t, rsaKey, x509.ExtKeyUsageClientAuth, false)), 0, ""},
		{"RSA TLS 1.2", ptr(ca.issue(t, rsaKey, x509.ExtKeyUsageClientAuth, false)),
			tls.VersionTLS12, ""},
		{"none", nil, 0, "didn't provide a certificate"},
		{"other CA", ptr(other.issue(t, ecKey, x509.ExtKeyUsageClientAuth, false)), 0,
			"certificate signed by unknown authority"},
		{"server usage", ptr(ca.issue(t, ecKey, x509.ExtKeyUsageServerAuth, false)), 0,
			"incompatible key usage"},
		{"expired", ptr(ca.issue(t, ecKey, x509.ExtKeyUsageClientAuth, true)), 0, "expired"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cas, srvErr := handshakeWith(t, cfg, ca.cert, c.cert, c.version)
			if cas != 0 {
				t.Errorf("the CertificateRequest names %d CAs; want none (see verifyClient)",
					cas)
			}
			switch {
			case c.refusal == "" && srvErr != nil:
				t.Fatalf("refused: %v", srvErr)
			case c.refusal != "" && (srvErr == nil || !strings.Contains(srvErr.Error(),
				c.refusal)):
				t.Fatalf("server: %v; want a refusal with %q", srvErr, c.refusal)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// handshakeWith runs a TLS handshake between a server with cfg and a
// client that trusts root and presents cert (nil: none), at most version
// (0: any); it returns how many CAs the client saw in the
// CertificateRequest and the server's error.
func handshakeWith(t *testing.T, cfg *tls.Config, root *x509.Certificate,
	cert *tls.Certificate, version uint16) (int, error) {
	t.Helper()
	a, b := socketPair(t)
	for _, c := range []net.Conn{a, b} {
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	cas := -1
	client := tls.Client(b, &tls.Config{RootCAs: roots, ServerName: "localhost",
		MaxVersion: version,
		GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cas = len(cri.AcceptableCAs)
			if cert == nil {
				return &tls.Certificate{}, nil
			}
			return cert, nil
		}})
	done := make(chan struct{})
	go func() {
		defer close(done)
		// A TLS 1.3 client learns of a refusal only on its first read.
		if client.Handshake() == nil {
			_, _ = client.Read(make([]byte, 1))
		}
		client.Close()
	}()
	err := tls.Server(a, cfg).Handshake()
	a.Close()
	<-done
	if cas < 0 {
		t.Fatal("the server sent no CertificateRequest")
	}
	return cas, err
}
