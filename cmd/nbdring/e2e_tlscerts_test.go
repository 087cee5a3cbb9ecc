package main

// End-to-end TLS with certificates as people make them: certtool and
// openssl run here with the README's recipes (RSA keys by default, ECDSA
// on request), and GnuTLS clients (nbdinfo, qemu-img) present them to a
// server under -tls-verify-peer. The Go-made ECDSA certificates of
// e2e_tls_test.go never met issue 16: GnuTLS withheld an RSA client
// certificate from a server whose CertificateRequest named its CA.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// e2eToolPKI is what one tool made: a server directory (ca-cert.pem,
// server-cert.pem, server-key.pem) and client directories in libnbd's and
// qemu's layout (ca-cert.pem, client-cert.pem, client-key.pem) by key
// type: "rsa" and "ecdsa" signed by the server's CA, "other-ca" (RSA)
// signed by another CA.
type e2eToolPKI struct {
	serverDir string
	clients   map[string]string
}

// e2eTool runs a certificate tool in dir; a failure fails the test.
func e2eTool(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader("") // never wait for a prompt
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func e2eWriteText(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, s := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// e2eCopyFile copies name from src to dst.
func e2eCopyFile(t *testing.T, src, dst, name string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(src, name))
	if err != nil {
		t.Fatal(err)
	}
	e2eWriteText(t, dst, map[string]string{name: string(b)})
}

// e2eClientDir makes a client directory holding work's client-cert.pem
// and client-key.pem and the server's CA (ca-cert.pem of caDir).
func e2eClientDir(t *testing.T, work, caDir string) string {
	t.Helper()
	dir := t.TempDir()
	e2eCopyFile(t, caDir, dir, "ca-cert.pem")
	e2eCopyFile(t, work, dir, "client-cert.pem")
	e2eCopyFile(t, work, dir, "client-key.pem")
	return dir
}

// e2eOtherCAClient is e2eClientDir for a client certificate of another CA
// (other's). The client trusts both CAs: qemu checks at start that its own
// certificate chains to its ca-cert.pem, so the server's refusal is what
// stops it.
func e2eOtherCAClient(t *testing.T, other, caDir string) string {
	t.Helper()
	dir := e2eClientDir(t, other, caDir)
	cas := ""
	for _, d := range []string{caDir, other} {
		b, err := os.ReadFile(filepath.Join(d, "ca-cert.pem"))
		if err != nil {
			t.Fatal(err)
		}
		cas += string(b)
	}
	e2eWriteText(t, dir, map[string]string{"ca-cert.pem": cas})
	return dir
}

// The certtool templates, as in the README (from libnbd's and qemu's
// TLS documentation).
const (
	e2eCertCA     = "cn = nbdring test CA\nca\ncert_signing_key\nexpiration_days = 30\n"
	e2eCertServer = "organization = nbdring tests\ncn = localhost\ndns_name = localhost\n" +
		"ip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\n"
	e2eCertClient = "organization = nbdring tests\ncn = %s\ntls_www_client\n" +
		"encryption_key\nsigning_key\n"
)

// e2eCerttoolCA makes ca-key.pem and ca-cert.pem in dir with certtool.
func e2eCerttoolCA(t *testing.T, dir string) {
	t.Helper()
	e2eWriteText(t, dir, map[string]string{"ca.info": e2eCertCA})
	e2eTool(t, dir, "certtool", "--generate-privkey", "--outfile", "ca-key.pem")
	e2eTool(t, dir, "certtool", "--generate-self-signed", "--load-privkey", "ca-key.pem",
		"--template", "ca.info", "--outfile", "ca-cert.pem")
}

// e2eCerttoolLeaf makes name-key.pem (keyArgs pick its type; none:
// certtool's default, RSA 3072) and name-cert.pem signed by dir's CA.
func e2eCerttoolLeaf(t *testing.T, dir, name, template string, keyArgs ...string) {
	t.Helper()
	e2eWriteText(t, dir, map[string]string{name + ".info": template})
	e2eTool(t, dir, "certtool", append([]string{"--generate-privkey", "--outfile",
		name + "-key.pem"}, keyArgs...)...)
	e2eTool(t, dir, "certtool", "--generate-certificate", "--load-ca-certificate",
		"ca-cert.pem", "--load-ca-privkey", "ca-key.pem", "--load-privkey", name+"-key.pem",
		"--template", name+".info", "--outfile", name+"-cert.pem")
}

func e2eCerttoolPKI(t *testing.T) e2eToolPKI {
	ca := t.TempDir()
	e2eCerttoolCA(t, ca)
	e2eCerttoolLeaf(t, ca, "server", e2eCertServer)
	p := e2eToolPKI{serverDir: t.TempDir(), clients: map[string]string{}}
	for _, f := range []string{"ca-cert.pem", "server-cert.pem", "server-key.pem"} {
		e2eCopyFile(t, ca, p.serverDir, f)
	}
	for key, args := range map[string][]string{"rsa": nil, "ecdsa": {"--key-type=ecdsa"}} {
		work := t.TempDir()
		e2eCopyFile(t, ca, work, "ca-cert.pem")
		e2eCopyFile(t, ca, work, "ca-key.pem")
		e2eCerttoolLeaf(t, work, "client", fmt.Sprintf(e2eCertClient, "certtool-"+key),
			args...)
		p.clients[key] = e2eClientDir(t, work, ca)
	}
	other := t.TempDir()
	e2eCerttoolCA(t, other)
	e2eCerttoolLeaf(t, other, "client", fmt.Sprintf(e2eCertClient, "certtool-other-ca"))
	p.clients["other-ca"] = e2eOtherCAClient(t, other, ca)
	return p
}

// openssl: a CA certificate from `req -x509`, leaves from `req` and
// `x509 -req` with the extensions below; keys RSA 3072 or ECDSA P-256.
var e2eOpensslKeys = map[string][]string{
	"rsa":   {"-newkey", "rsa:3072"},
	"ecdsa": {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"},
}

const (
	e2eOpensslServerExt = "subjectAltName = DNS:localhost, IP:127.0.0.1\n" +
		"keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n"
	e2eOpensslClientExt = "keyUsage = digitalSignature\nextendedKeyUsage = clientAuth\n"
)

func e2eOpensslCA(t *testing.T, dir string) {
	t.Helper()
	e2eTool(t, dir, "openssl", "req", "-x509", "-newkey", "rsa:3072", "-nodes",
		"-keyout", "ca-key.pem", "-out", "ca-cert.pem", "-days", "30",
		"-subj", "/CN=nbdring test CA")
}

// e2eOpensslLeaf makes name-key.pem and name-cert.pem for subject cn,
// signed by dir's CA, with the extensions ext.
func e2eOpensslLeaf(t *testing.T, dir, name, cn, ext string, keyArgs []string) {
	t.Helper()
	e2eWriteText(t, dir, map[string]string{name + ".ext": ext})
	e2eTool(t, dir, "openssl", append(append([]string{"req"}, keyArgs...), "-nodes",
		"-keyout", name+"-key.pem", "-out", name+".csr", "-subj", "/CN="+cn)...)
	e2eTool(t, dir, "openssl", "x509", "-req", "-in", name+".csr", "-CA", "ca-cert.pem",
		"-CAkey", "ca-key.pem", "-CAcreateserial", "-days", "30", "-extfile", name+".ext",
		"-out", name+"-cert.pem")
}

func e2eOpensslPKI(t *testing.T) e2eToolPKI {
	ca := t.TempDir()
	e2eOpensslCA(t, ca)
	e2eOpensslLeaf(t, ca, "server", "localhost", e2eOpensslServerExt, e2eOpensslKeys["rsa"])
	p := e2eToolPKI{serverDir: t.TempDir(), clients: map[string]string{}}
	for _, f := range []string{"ca-cert.pem", "server-cert.pem", "server-key.pem"} {
		e2eCopyFile(t, ca, p.serverDir, f)
	}
	for key, args := range e2eOpensslKeys {
		work := t.TempDir()
		e2eCopyFile(t, ca, work, "ca-cert.pem")
		e2eCopyFile(t, ca, work, "ca-key.pem")
		e2eOpensslLeaf(t, work, "client", "openssl-"+key, e2eOpensslClientExt, args)
		p.clients[key] = e2eClientDir(t, work, ca)
	}
	other := t.TempDir()
	e2eOpensslCA(t, other)
	e2eOpensslLeaf(t, other, "client", "openssl-other-ca", e2eOpensslClientExt,
		e2eOpensslKeys["rsa"])
	p.clients["other-ca"] = e2eOtherCAClient(t, other, ca)
	return p
}

// e2eTLSClients runs each GnuTLS client against addr with a client
// directory; each returns the client's error and output.
var e2eTLSClients = map[string]func(addr, dir string) (string, error){
	"nbdinfo": func(addr, dir string) (string, error) {
		out, errOut, err := e2eRunErr("nbdinfo", "--size", e2eTLSURI(addr, "", dir))
		return out + errOut, err
	},
	"qemu-img": func(addr, dir string) (string, error) {
		args := append(append([]string{"info"}, e2eQemuTLS(dir)...), "--image-opts",
			e2eQemuTLSImage(addr))
		out, errOut, err := e2eRunErr("qemu-img", args...)
		return out + errOut, err
	},
}

// TestE2ETLSToolCerts: under -tls-verify-peer, RSA and ECDSA client
// certificates made by certtool and by openssl get in with nbdinfo and
// with qemu-img; a client without a certificate, or with one from another
// CA, is refused by the server's verification.
func TestE2ETLSToolCerts(t *testing.T) {
	for _, tool := range []struct {
		name string
		make func(*testing.T) e2eToolPKI
	}{{"certtool", e2eCerttoolPKI}, {"openssl", e2eOpensslPKI}} {
		t.Run(tool.name, func(t *testing.T) {
			e2eNeedTool(t, tool.name, "nbdinfo", "qemu-img")
			p := tool.make(t)
			export := e2eMakeFile(t, t.TempDir(), "export.img", 1<<20, 3)
			start := func(t *testing.T) (*e2eServer, string) {
				return e2eStartTCP(t, "-tls", "require", "-tls-certificates", p.serverDir,
					"-tls-verify-peer", export)
			}
			s, addr := start(t)
			for _, key := range []string{"rsa", "ecdsa"} {
				for _, client := range []string{"nbdinfo", "qemu-img"} {
					t.Run(key+"/"+client, func(t *testing.T) {
						e2eToolCertAccepted(t, s, addr, p.clients[key], client,
							tool.name+"-"+key)
					})
				}
			}
			// A server each: refusals are logged at most once a second.
			noCert := t.TempDir()
			e2eCopyFile(t, p.serverDir, noCert, "ca-cert.pem")
			for _, client := range []string{"nbdinfo", "qemu-img"} {
				t.Run("no-cert/"+client, func(t *testing.T) {
					s, addr := start(t)
					e2eToolCertRefused(t, s, addr, noCert, client,
						"didn't provide a certificate")
				})
				t.Run("other-ca/"+client, func(t *testing.T) {
					s, addr := start(t)
					e2eToolCertRefused(t, s, addr, p.clients["other-ca"], client,
						"certificate signed by unknown authority")
				})
			}
		})
	}
}

// e2eToolCertAccepted connects with client and the certificates in dir,
// and checks the server logged the certificate's subject CN=cn.
func e2eToolCertAccepted(t *testing.T, s *e2eServer, addr, dir, client, cn string) {
	t.Helper()
	want := `client certificate "CN=` + cn
	before := strings.Count(s.stderr.String(), want)
	out, err := e2eTLSClients[client](addr, dir)
	if err != nil {
		t.Fatalf("%s with %s's certificate: %v\n%s\nserver:\n%s", client, cn, err, out,
			s.stderr)
	}
	if !strings.Contains(out, "1048576") && !strings.Contains(out, "1 MiB") {
		t.Fatalf("%s with %s's certificate: no 1 MiB size in its output:\n%s", client, cn,
			out)
	}
	e2eWaitMoreLog(t, s, want, before)
}

// e2eToolCertRefused connects with client and dir's certificates, which
// must fail, and waits for the server's log to say why.
func e2eToolCertRefused(t *testing.T, s *e2eServer, addr, dir, client, why string) {
	t.Helper()
	out, err := e2eTLSClients[client](addr, dir)
	if err == nil {
		t.Fatalf("%s connected; want a refusal (%s):\n%s", client, why, out)
	}
	t.Logf("%s: %s", client, strings.TrimSpace(out))
	e2eWaitLog(t, s, why)
}

// e2eWaitMoreLog waits until the server's log holds want more than the
// before times it held it.
func e2eWaitMoreLog(t *testing.T, s *e2eServer, want string, before int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(s.stderr.String(), want) == before {
		if time.Now().After(deadline) {
			t.Fatalf("server log lacks another %q:\n%s", want, s.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
