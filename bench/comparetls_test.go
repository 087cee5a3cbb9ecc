package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nbdring/nbdring/wire"
)

// testCertDir writes a CA, a server certificate for localhost and a
// client certificate in the layout compare's -tls-certificates takes.
// ECDSA P-256: GnuTLS (libnbd, qemu, nbdkit) offers an RSA client
// certificate to Go's TLS 1.3 server only with PSS, which it does not
// match to an RSA key; ECDSA matches everywhere.
func testCertDir(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1),
		Subject:   pkix.Name{CommonName: "nbdbench test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, typ string, der []byte) {
		b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(tlsCAFile, "CERTIFICATE", caDER)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for i, leaf := range []struct {
		cert, key string
		usage     x509.ExtKeyUsage
	}{{tlsServerCertFile, tlsServerKeyFile, x509.ExtKeyUsageServerAuth},
		{tlsClientCertFile, tlsClientKeyFile, x509.ExtKeyUsageClientAuth}} {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(2 + i)),
			Subject:   pkix.Name{CommonName: "localhost"},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage: []x509.ExtKeyUsage{leaf.usage}, BasicConstraintsValid: true,
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		write(leaf.cert, "CERTIFICATE", der)
		write(leaf.key, "PRIVATE KEY", kder)
	}
	return dir
}

// TestCompareTLS runs compare over TLS against nbdring and nbdkit with
// both clients (fio's libnbd finds the certificates in the home compare
// makes for it), then checks that every installed server compare starts
// with TLS refuses a plaintext client: the rows measured TLS.
func TestCompareTLS(t *testing.T) {
	for _, bin := range []string{"nbdkit", "fio"} {
		if _, err := exec.LookPath(bin); err != nil {
			skipMissing(t, "client", "%s not installed (make test installs it)", bin)
		}
	}
	bin := nbdringBin(t)
	certs := testCertDir(t)
	file := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(file, make([]byte, 16<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	wls, err := ParseWorkloads("randread:4k:8:1,randwrite:4k:8:2", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	servers := []string{"nbdring", "nbdkit"}
	for _, client := range []string{"nbdbench", "fio"} {
		t.Run(client, func(t *testing.T) {
			rows, err := Compare(context.Background(), CompareConfig{File: file,
				Servers: servers, Workloads: wls, Rounds: 1, Client: client, NbdRing: bin,
				TLSCerts: certs, Log: io.Discard})
			if err != nil {
				t.Fatal(err)
			}
			checkRows(t, rows, servers, wls)
			for _, r := range rows {
				if !r.TLS {
					t.Errorf("row %+v: want TLS set", r)
				}
			}
		})
	}
	for _, name := range []string{"nbdring", "qemu-nbd", "nbdkit", "nbd-server"} {
		if why := serverMissing(name, &CompareConfig{NbdRing: bin}); why != "" {
			t.Logf("not checking %s: %s", name, why)
			continue
		}
		srv, err := startServer(name, file, &CompareConfig{NbdRing: bin, TLSCerts: certs})
		if err != nil {
			t.Fatalf("%s over TLS: %v", name, err)
		}
		err = plaintextHandshake(srv)
		srv.stop()
		var refused *wire.OptionError
		if !errors.As(err, &refused) || !strings.Contains(err.Error(), "TLS") {
			t.Errorf("%s started with TLS: plaintext handshake gave %v; want TLS required",
				name, err)
		}
	}
}

// plaintextHandshake tries srv's export without TLS.
func plaintextHandshake(srv *server) error {
	tgt, err := ParseURI(strings.Replace(srv.fioURI, "nbds+unix", "nbd+unix", 1))
	if err != nil {
		return err
	}
	c, err := net.DialTimeout(tgt.Network, tgt.Addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	_, _, err = tgt.Handshake(c, wire.ClientOptions{Name: tgt.Export})
	return err
}

// TestCheckTLSDir: a directory without the server's files, or with a
// client certificate but no key, is refused with the file named.
func TestCheckTLSDir(t *testing.T) {
	dir := testCertDir(t)
	if got, err := checkTLSDir(dir); err != nil || got != dir {
		t.Fatalf("checkTLSDir(%s) = %q, %v", dir, got, err)
	}
	for _, f := range []string{tlsClientKeyFile, tlsServerKeyFile} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
		if _, err := checkTLSDir(dir); err == nil || !strings.Contains(err.Error(), f) {
			t.Errorf("without %s: %v; want it named", f, err)
		}
	}
}
