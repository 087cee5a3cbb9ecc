package main

// End-to-end TLS tests: certificates made here with crypto/x509, clients
// that use GnuTLS (libnbd's nbdinfo, nbdcopy and fio's nbd engine, and
// qemu-img), nbdring in its three TLS modes.

import (
	"bytes"
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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/nbdring/nbdring/bench"
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

// ECDSA P-256 keys: quick to make, and accepted by every client here.
// RSA keys, as certtool and openssl make them by default, are tested in
// e2e_tlscerts_test.go.
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
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"nbdring tests"}},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
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
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: l.cn, Organization: []string{"nbdring tests"}},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
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

// TestE2ETLSFio runs fio's nbd engine with an nbds URI. fio does not let
// libnbd read tls-certificates= from a URI (local file access is off), so
// fio runs as nobody with a HOME whose .pki/libnbd holds the client's
// certificates: libnbd's default place for a user other than root.
func TestE2ETLSFio(t *testing.T) {
	e2eNeedTool(t, "fio")
	if os.Geteuid() != 0 {
		skipMissing(t, "root", "running fio as another user (for its certificate "+
			"directory) needs root")
	}
	ts := e2eNewTLS(t)
	_, addr := e2eStartTCP(t, "-shards", "2", "-tls", "require", "-tls-certificates",
		ts.serverDir, ts.export)
	home, err := os.MkdirTemp("", "fio-home")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	pki := filepath.Join(home, ".pki", "libnbd")
	if err := os.MkdirAll(pki, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca-cert.pem", "client-cert.pem", "client-key.pem"} {
		b, err := os.ReadFile(filepath.Join(ts.client, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(pki, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{home, filepath.Dir(pki), pki} {
		_ = os.Chmod(d, 0o755)
	}
	_, port, _ := net.SplitHostPort(addr)
	const jobs, jobSize = 2, 4 << 20
	ctx, cancel := context.WithTimeout(context.Background(), e2eToolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "fio", "--name=tls", "--ioengine=nbd",
		"--uri=nbds://localhost:"+port+"/", "--rw=randwrite", "--bs=4k", "--iodepth=16",
		"--numjobs="+strconv.Itoa(jobs), "--size="+strconv.Itoa(jobSize),
		"--offset_increment="+strconv.Itoa(jobSize), "--verify=crc32c", "--verify_fatal=1",
		"--do_verify=1", "--verify_state_save=0", "--output-format=json")
	cmd.Dir = home
	cmd.Env = append(os.Environ(), "HOME="+home)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534,
		Gid: 65534}}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("fio over TLS: %v\n%s\n%s", err, e.String(), o.String())
	}
	rep := e2eFioJobs(t, o.String(), jobs)
	for i, j := range rep.Jobs {
		if j.Error != 0 || j.Write.IOBytes != jobSize || j.Read.IOBytes != jobSize {
			t.Errorf("fio job %d over TLS: error %d, wrote %d, verified %d; want %d each",
				i, j.Error, j.Write.IOBytes, j.Read.IOBytes, jobSize)
		}
	}
}

// e2eRefused runs nbdinfo, which must fail, and waits for the server's
// log to say why.
func e2eRefused(t *testing.T, s *e2eServer, uri, logWant string) {
	t.Helper()
	_, errOut, err := e2eRunErr("nbdinfo", "--size", uri)
	if err == nil {
		t.Fatalf("nbdinfo %s succeeded; want a refusal", uri)
	}
	e2eWaitLog(t, s, logWant)
	t.Logf("client: %s", strings.TrimSpace(errOut))
}

func e2eWaitLog(t *testing.T, s *e2eServer, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(s.stderr.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("server log lacks %q:\n%s", want, s.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestE2ETLSRefusals(t *testing.T) {
	e2eNeedTool(t, "nbdinfo")
	ts := e2eNewTLS(t)
	other := e2eNewPKI(t, 1, "another CA")
	t.Run("wrong CA", func(t *testing.T) {
		// The client trusts another CA: it must reject the server.
		s, addr := e2eStartTCP(t, "-tls", "require", "-tls-certificates", ts.serverDir,
			ts.export)
		e2eRefused(t, s, e2eTLSURI(addr, "", ts.pki.clientDir(t, "client1", other)),
			"TLS handshake failed")
	})
	t.Run("client cert from wrong CA", func(t *testing.T) {
		s, addr := e2eStartTCP(t, "-tls", "require", "-tls-certificates", ts.serverDir,
			"-tls-verify-peer", ts.export)
		// The server names no CA in its CertificateRequest, so GnuTLS
		// sends the certificate and the server's verification refuses it.
		e2eRefused(t, s, e2eTLSURI(addr, "", other.clientDir(t, "client1", ts.pki)),
			"certificate signed by unknown authority")
	})
	t.Run("expired server cert", func(t *testing.T) {
		dir := ts.pki.serverDir(t, e2eLeaf{cn: "localhost", expired: true})
		s, addr := e2eStartTCP(t, "-tls", "require", "-tls-certificates", dir, ts.export)
		e2eRefused(t, s, e2eTLSURI(addr, "", ts.client), "TLS handshake failed")
	})
	t.Run("expired client cert", func(t *testing.T) {
		dir := t.TempDir()
		cert, key, _ := ts.pki.sign(t, e2eLeaf{cn: "client1", client: true, expired: true})
		e2eWriteFiles(t, dir, map[string][]byte{"ca-cert.pem": ts.pki.caPEM,
			"client-cert.pem": cert, "client-key.pem": key})
		s, addr := e2eStartTCP(t, "-tls", "require", "-tls-certificates", ts.serverDir,
			"-tls-verify-peer", ts.export)
		e2eRefused(t, s, e2eTLSURI(addr, "", dir), "expired")
	})
	t.Run("no client cert", func(t *testing.T) {
		s, addr := e2eStartTCP(t, "-tls", "require", "-tls-certificates", ts.serverDir,
			"-tls-verify-peer", "-metrics", "127.0.0.1:0", ts.export)
		e2eRefused(t, s, e2eTLSURI(addr, "", ts.pki.clientDir(t, "", nil)),
			"didn't provide a certificate")
		e2eMetricLine(t, s, `nbdring_handshakes_total{result="tls_failed"} 1`)
	})
	t.Run("revoked client cert", func(t *testing.T) {
		dir := t.TempDir()
		cert, key, serial := ts.pki.sign(t, e2eLeaf{cn: "client1", client: true})
		e2eWriteFiles(t, dir, map[string][]byte{"ca-cert.pem": ts.pki.caPEM,
			"client-cert.pem": cert, "client-key.pem": key})
		sdir := ts.pki.serverDir(t, e2eLeaf{cn: "localhost"})
		e2eWriteFiles(t, sdir, map[string][]byte{"ca-crl.pem": ts.pki.crl(t, serial)})
		s, addr := e2eStartTCP(t, "-tls", "require", "-tls-certificates", sdir,
			"-tls-verify-peer", ts.export)
		e2eRefused(t, s, e2eTLSURI(addr, "", dir), "is revoked by")
		// Another certificate of the same CA still gets in.
		e2eRun(t, "nbdinfo", "--size", e2eTLSURI(addr, "", ts.client))
	})
	t.Run("subject not allowed", func(t *testing.T) {
		s, addr := e2eStartTCP(t, "-tls", "require", "-tls-certificates", ts.serverDir,
			"-tls-verify-peer", "-allow", "subject:CN=host1", "-metrics", "127.0.0.1:0",
			ts.export)
		e2eRefused(t, s, e2eTLSURI(addr, "", ts.client),
			`subject "CN=client1,O=nbdring tests" not allowed by -allow`)
		e2eMetricLine(t, s, `nbdring_handshakes_total{result="refused"} 1`)
		e2eRun(t, "nbdinfo", "--size", e2eTLSURI(addr, "", ts.pki.clientDir(t, "host1", nil)))
	})
	t.Run("address not allowed", func(t *testing.T) {
		s, addr := e2eStartTCP(t, "-allow", "127.0.0.2/32,::2", ts.export)
		e2eRefused(t, s, "nbd://"+addr, "refusing 127.0.0.1:")
		// Closed before any byte: no greeting.
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 18)); n != 0 {
			t.Fatalf("refused client read %d bytes (%v); want none", n, err)
		}
		// 127.0.0.2 is allowed.
		c2 := e2eDialFrom(t, "127.0.0.2", addr)
		if _, err := io.ReadFull(c2, make([]byte, 18)); err != nil {
			t.Fatalf("allowed 127.0.0.2: no greeting: %v", err)
		}
	})
}

// e2eDialFrom connects to addr from source address src (any 127.x
// address is this machine's loopback).
func e2eDialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	return c
}

// crl returns a CRL signed by the CA that revokes serial.
func (p *e2ePKI) crl(t *testing.T, serial *big.Int) []byte {
	t.Helper()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(1), ThisUpdate: time.Now().Add(-time.Hour),
		NextUpdate: time.Now().Add(24 * time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: serial,
			RevocationTime: time.Now().Add(-time.Minute)}},
	}, p.ca, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}

// TestE2EHandshakeStallCut: a client that stops in the middle of the TLS
// handshake is closed when the 10 s handshake limit (engine/limits.go)
// runs out, counted from its connection, not from STARTTLS.
func TestE2EHandshakeStallCut(t *testing.T) {
	t.Parallel()
	ts := e2eNewTLS(t)
	s, addr := e2eStartTCP(t, "-tls", "require", "-tls-certificates", ts.serverDir,
		"-metrics", "127.0.0.1:0", ts.export)
	start := time.Now()
	c := e2eDialFrom(t, "127.0.0.1", addr)
	if _, err := io.ReadFull(c, make([]byte, 18)); err != nil {
		t.Fatal(err)
	}
	startTLS := []byte{0, 0, 0, 3, 'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 5, 0, 0, 0, 0}
	if _, err := c.Write(startTLS); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 20)); err != nil {
		t.Fatalf("STARTTLS reply: %v", err)
	}
	time.Sleep(3 * time.Second) // well into the limit before stalling mid-record
	if _, err := c.Write([]byte{0x16, 0x03, 0x01, 0x01, 0x00, 0x01}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	n, err := c.Read(make([]byte, 64))
	took := time.Since(start)
	if took < 9*time.Second || took > 13*time.Second {
		t.Fatalf("stalled handshake closed after %v (read %d, %v); want about 10 s", took, n,
			err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("server did not close the stalled handshake within 15 s")
	}
	e2eMetricLine(t, s, `nbdring_handshakes_total{result="timed_out"} 1`)
}

// TestE2ETLSNbdbench: nbdbench's client (bench.Run) over nbds+unix with a
// client certificate, verifying what it wrote; and refused by a server
// without TLS, as nbds requires.
func TestE2ETLSNbdbench(t *testing.T) {
	ts := e2eNewTLS(t)
	// Verification takes never-written blocks to be zeros: a fresh export.
	export := e2eMakeFile(t, t.TempDir(), "zero.img", 16<<20, 0)
	s := e2eStart(t, "-tls", "require", "-tls-certificates", ts.serverDir, "-tls-verify-peer",
		export)
	uri := "nbds+unix:///?socket=" + s.sock + "&tls-certificates=" + ts.client
	res, err := bench.Run(context.Background(), bench.Config{URI: uri, RW: "randrw", Mix: 50,
		BS: 64 << 10, QD: 8, Conns: 2, Ops: 1024, Verify: true})
	if err != nil || res.Errors != 0 || res.VerifyErrors != 0 || res.Ops != 1024 {
		t.Fatalf("nbdbench randrw over TLS: %v %+v", err, res)
	}
	if !strings.Contains(s.stderr.String(), `client certificate "CN=client1`) {
		t.Errorf("nbdbench's client certificate was not presented:\n%s", s.stderr)
	}
	plain := e2eStart(t, ts.export)
	_, err = bench.Run(context.Background(), bench.Config{URI: "nbds+unix:///?socket=" +
		plain.sock + "&tls-certificates=" + ts.client, RW: "read", BS: 4096, QD: 1, Conns: 1,
		Ops: 1})
	if err == nil || !strings.Contains(err.Error(), "refused NBD_OPT_STARTTLS") {
		t.Fatalf("nbds against a plaintext server: %v; want a STARTTLS refusal", err)
	}
}

// TestE2ETLSPerExport: with -tls on and -tls-exports secret, a plaintext
// client lists and uses only "public" (and is told "secret" needs TLS),
// a TLS client sees and uses both; no listing or description shows a
// server path.
func TestE2ETLSPerExport(t *testing.T) {
	e2eNeedTool(t, "nbdinfo")
	ts := e2eNewTLS(t)
	pub := e2eMakeFile(t, t.TempDir(), "public.img", 1<<20, 0)
	_, addr := e2eStartTCP(t, "-tls", "on", "-tls-certificates", ts.serverDir,
		"-tls-exports", "secret", "public="+pub, "secret="+ts.export)
	plain := e2eRun(t, "nbdinfo", "--list", "--json", "nbd://"+addr)
	if !strings.Contains(plain, `"public"`) || strings.Contains(plain, `"secret"`) {
		t.Errorf("plaintext --list shows the TLS-only export or hides the other:\n%s", plain)
	}
	_, errOut, err := e2eRunErr("qemu-img", "info", "nbd://"+addr+"/secret")
	if err == nil || !strings.Contains(errOut, "TLS negotiation required") {
		t.Errorf("plaintext open of the TLS-only export: %v\n%s", err, errOut)
	}
	e2eRun(t, "nbdinfo", "--size", "nbd://"+addr+"/public")
	tlsList := e2eRun(t, "nbdinfo", "--list", "--json", e2eTLSURI(addr, "", ts.client))
	if !strings.Contains(tlsList, `"public"`) || !strings.Contains(tlsList, `"secret"`) {
		t.Errorf("TLS --list lacks an export:\n%s", tlsList)
	}
	out := e2eRun(t, "nbdinfo", "--size", e2eTLSURI(addr, "secret", ts.client))
	if strings.TrimSpace(out) != "67108864" {
		t.Errorf("secret over TLS: size %q", out)
	}
	for _, out := range []string{plain, tlsList} {
		if strings.Contains(out, pub) || strings.Contains(out, ts.export) ||
			strings.Contains(out, "description") {
			t.Errorf("the export list reveals a path or a description:\n%s", out)
		}
	}
}

// TestE2ESocketMode: a Unix socket's access is its file mode, 0600 unless
// -socket-mode says otherwise; a bad mode or a TLS flag without -tls is
// refused at start with the flag named.
func TestE2ESocketMode(t *testing.T) {
	export := e2eMakeFile(t, t.TempDir(), "export.img", 1<<20, 0)
	for _, c := range []struct {
		args []string
		mode os.FileMode
	}{{nil, 0o600}, {[]string{"-socket-mode", "0660"}, 0o660}} {
		s := e2eStart(t, append(c.args, export)...)
		st, err := os.Stat(s.sock)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != c.mode {
			t.Errorf("%v: socket mode %v, want %v", c.args, st.Mode().Perm(), c.mode)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-socket-mode", "rw"}, "-socket-mode"},
		{[]string{"-tls-verify-peer"}, "need -tls on or -tls require"},
		{[]string{"-tls", "maybe"}, "-tls \"maybe\""},
		{[]string{"-tls", "on"}, "-tls-certificates DIR"},
		{[]string{"-tls", "on", "-tls-certificates", t.TempDir()}, "server-cert.pem"},
		{[]string{"-allow", "subject:CN=x"}, "needs -tls require and -tls-verify-peer"},
		{[]string{"-allow", "nowhere"}, "not a CIDR"},
	} {
		cmd := exec.Command(e2eBin(t), append(append([]string{"-listen",
			"unix:" + filepath.Join(e2eSocketDir(t), "s")}, c.args...), export)...)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("%v: %v, output %q; want a refusal naming %q", c.args, err, out, c.want)
		}
	}
}
