package main

// End-to-end TLS tests: certificates made here with crypto/x509, clients
// that use GnuTLS (libnbd's nbdinfo, nbdcopy and fio's nbd engine, and
// qemu-img), nbdring in its three TLS modes.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// e2ePKI is a CA and what it signed, written in the directory layouts
// nbdring (server) and libnbd and qemu (client) read.
type e2ePKI struct {
	caKey  *ecdsa.PrivateKey
	ca     *x509.Certificate
	caPEM  []byte
	serial int64
}

// ECDSA P-256 keys: GnuTLS picks a client certificate only if its key
// type matches the server's signature algorithms, and for TLS 1.3 Go's
// CertificateRequest names RSA only with PSS, which GnuTLS does not match
// to an RSA key; ECDSA P-256 matches everywhere.
var (
	e2eKeysOnce sync.Once
	e2eKeys     [4]*ecdsa.PrivateKey
)

func e2eKey(t *testing.T, i int) *ecdsa.PrivateKey {
	e2eKeysOnce.Do(func() {
		for k := range e2eKeys {
			var err error
			if e2eKeys[k], err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
				panic(err)
			}
		}
	})
	return e2eKeys[i]
}

// e2eNewPKI makes a CA; key picks one of the shared keys (a second CA
// uses another, so its signatures do not verify with the first).
func e2eNewPKI(t *testing.T, key int, cn string) *e2ePKI {
	t.Helper()
	p := &e2ePKI{caKey: e2eKey(t, key), serial: 100}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn, Organization: []string{"nbdring tests"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &p.caKey.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	p.ca, _ = x509.ParseCertificate(der)
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return p
}

// e2eLeaf is what to put in a signed certificate.
type e2eLeaf struct {
	cn      string
	client  bool // client authentication, else server (localhost, 127.0.0.1, ::1)
	expired bool
}

// sign returns a certificate and key in PEM for l, signed by the CA.
func (p *e2ePKI) sign(t *testing.T, l e2eLeaf) (certPEM, keyPEM []byte, serial *big.Int) {
	t.Helper()
	key := e2eKey(t, 3)
	p.serial++
	serial = big.NewInt(p.serial)
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: l.cn, Organization: []string{"nbdring tests"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
	}
	if l.expired {
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)
	}
	if l.client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	return certPEM, keyPEM, serial
}

// serverDir writes ca-cert.pem, server-cert.pem and server-key.pem.
func (p *e2ePKI) serverDir(t *testing.T, l e2eLeaf) string {
	t.Helper()
	dir := t.TempDir()
	cert, key, _ := p.sign(t, l)
	e2eWriteFiles(t, dir, map[string][]byte{"ca-cert.pem": p.caPEM, "server-cert.pem": cert,
		"server-key.pem": key})
	return dir
}

// clientDir writes ca-cert.pem and, for a non-empty cn, client-cert.pem
// and client-key.pem (libnbd's and qemu's layout). trust is the CA the
// client trusts (nil: p's).
func (p *e2ePKI) clientDir(t *testing.T, cn string, trust *e2ePKI) string {
	t.Helper()
	dir := t.TempDir()
	if trust == nil {
		trust = p
	}
	files := map[string][]byte{"ca-cert.pem": trust.caPEM}
	if cn != "" {
		cert, key, _ := p.sign(t, e2eLeaf{cn: cn, client: true})
		files["client-cert.pem"], files["client-key.pem"] = cert, key
	}
	e2eWriteFiles(t, dir, files)
	return dir
}

func e2eWriteFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func e2eTLSURI(addr, export, dir string) string {
	_, port, _ := net.SplitHostPort(addr)
	return "nbds://localhost:" + port + "/" + export + "?tls-certificates=" + dir
}

// e2eTLSSetup: a CA, a server directory and a client directory (CN
// client1), and a 64 MiB export.
type e2eTLSSetup struct {
	pki               *e2ePKI
	serverDir, client string
	export            string
}

func e2eNewTLS(t *testing.T) e2eTLSSetup {
	t.Helper()
	p := e2eNewPKI(t, 0, "nbdring test CA")
	return e2eTLSSetup{pki: p, serverDir: p.serverDir(t, e2eLeaf{cn: "localhost"}),
		client: p.clientDir(t, "client1", nil),
		export: e2eMakeFile(t, t.TempDir(), "export.img", e2eExportSize, 7)}
}

func TestE2ETLSNbdinfo(t *testing.T) {
	e2eNeedTool(t, "nbdinfo")
	ts := e2eNewTLS(t)
	s, addr := e2eStartTCP(t, "-tls", "require", "-tls-certificates", ts.serverDir,
		"-tls-verify-peer", ts.export)
	out := e2eRun(t, "nbdinfo", "--size", e2eTLSURI(addr, "", ts.client))
	if strings.TrimSpace(out) != "67108864" {
		t.Fatalf("nbdinfo --size over TLS: %q, want 67108864", out)
	}
	if !strings.Contains(s.stderr.String(), `client certificate "CN=client1,O=nbdring tests"`) {
		t.Errorf("client subject not logged:\n%s", s.stderr)
	}
	// A plaintext client is told TLS is required: qemu-img words
	// NBD_REP_ERR_TLS_REQD as "TLS negotiation required" and prints the
	// server's message; libnbd logs the message with LIBNBD_DEBUG.
	t.Setenv("LIBNBD_DEBUG", "1")
	_, errOut, err := e2eRunErr("nbdinfo", "nbd://"+addr)
	if err == nil || !strings.Contains(errOut, "server error message: this server requires TLS") {
		t.Errorf("plaintext nbdinfo against -tls require: %v\n%s", err, errOut)
	}
	_, errOut, err = e2eRunErr("qemu-img", "info", "nbd://"+addr)
	if err == nil || !strings.Contains(errOut, "TLS negotiation required") ||
		!strings.Contains(errOut, "this server requires TLS") {
		t.Errorf("plaintext qemu-img against -tls require: %v\n%s", err, errOut)
	}
	t.Logf("qemu-img's message: %s", strings.TrimSpace(errOut))
}

// TestE2ETLSNbdcopy copies 32 MiB in and out over TLS on 4 connections
// each way (the shards' TLS data path, large requests, many records).
func TestE2ETLSNbdcopy(t *testing.T) {
	e2eNeedTool(t, "nbdcopy")
	ts := e2eNewTLS(t)
	dir := t.TempDir()
	const size = 32 << 20
	src := e2eMakeFile(t, dir, "src.img", size, 11)
	export := e2eMakeFile(t, dir, "export.img", size, 0)
	back := filepath.Join(dir, "back.img")
	_, addr := e2eStartTCP(t, "-shards", "2", "-tls", "require", "-tls-certificates",
		ts.serverDir, export)
	uri := e2eTLSURI(addr, "", ts.client)
	e2eRun(t, "nbdcopy", "--connections=4", "--flush", src, uri)
	e2eSameBytes(t, "export after nbdcopy over TLS", e2eReadFile(t, export), e2eReadFile(t, src))
	e2eRun(t, "nbdcopy", "--connections=4", uri, back)
	e2eSameBytes(t, "nbdcopy round trip over TLS", e2eReadFile(t, back), e2eReadFile(t, src))
}

// qemu's x509 credentials as an --object, and an --image-opts string for
// an NBD export over TCP with them.
func e2eQemuTLS(dir string) []string {
	return []string{"--object", "tls-creds-x509,id=tls0,dir=" + dir + ",endpoint=client"}
}

func e2eQemuTLSImage(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	return "driver=nbd,server.type=inet,server.host=" + host + ",server.port=" + port +
		",tls-creds=tls0,tls-hostname=localhost"
}

func TestE2ETLSQemuImg(t *testing.T) {
	e2eNeedTool(t, "qemu-img")
	ts := e2eNewTLS(t)
	dir := t.TempDir()
	const size = 16 << 20
	src := e2eMakeFile(t, dir, "src.img", size, 12)
	export := e2eMakeFile(t, dir, "export.img", size, 0)
	_, addr := e2eStartTCP(t, "-tls", "on", "-tls-certificates", ts.serverDir,
		"-tls-verify-peer", export)
	img := e2eQemuTLSImage(addr)
	args := append(append([]string{"convert"}, e2eQemuTLS(ts.client)...), "-n", "-f", "raw",
		"--target-image-opts", src, img)
	e2eRun(t, "qemu-img", args...)
	e2eSameBytes(t, "export after qemu-img convert over TLS", e2eReadFile(t, export),
		e2eReadFile(t, src))
	args = append(append([]string{"compare"}, e2eQemuTLS(ts.client)...), "--image-opts",
		"driver=file,filename="+src, img)
	e2eRun(t, "qemu-img", args...)
}
