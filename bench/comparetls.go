package bench

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// The certificate directory compare hands every server and the client:
// qemu's and nbdkit's layout, which nbdring, qemu-nbd and nbdkit read as
// it is (nbd-server is given the paths in its config). The client files
// are optional; with them the servers that can check a client
// certificate do.
const (
	tlsCAFile         = "ca-cert.pem"
	tlsServerCertFile = "server-cert.pem"
	tlsServerKeyFile  = "server-key.pem"
	tlsClientCertFile = "client-cert.pem"
	tlsClientKeyFile  = "client-key.pem"
)

// checkTLSDir returns dir made absolute (servers change directory) once
// the files every server needs are readable there.
func checkTLSDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("-tls-certificates: %w", err)
	}
	// The directory goes unescaped into URIs (server.setURI).
	if strings.ContainsAny(abs, "&#?%+ ") {
		return "", fmt.Errorf("-tls-certificates %s: the path has one of & # ? %% + or a "+
			"space, which NBD URIs would misread; use another directory", abs)
	}
	need := []string{tlsCAFile, tlsServerCertFile, tlsServerKeyFile}
	if hasClientCert(abs) {
		need = append(need, tlsClientKeyFile)
	}
	for _, f := range need {
		if err := readable(filepath.Join(abs, f)); err != nil {
			return "", fmt.Errorf("-tls-certificates %s: %w (the directory needs %s, %s and "+
				"%s, and %s with %s for a client certificate; the server certificate must "+
				"name localhost)", abs, err, tlsCAFile, tlsServerCertFile, tlsServerKeyFile,
				tlsClientCertFile, tlsClientKeyFile)
		}
	}
	return abs, nil
}

func readable(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	return f.Close()
}

func hasClientCert(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, tlsClientCertFile))
	return !errors.Is(err, os.ErrNotExist)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// nobodyID is the uid and gid of nobody on Debian.
const nobodyID = 65534

// fioTLSHome prepares s's directory for fio's nbd engine with an nbds URI
// and returns the home fio runs in (fioTLSCmd), where it also writes its
// output. fio does not let libnbd read tls-certificates= from a URI, so
// the client files go where libnbd looks by default: $HOME/.pki/libnbd,
// except for root, which libnbd sends to /etc/pki/libnbd; as root fio
// therefore runs as nobody, and the server's socket is opened to it.
func fioTLSHome(s *server) (string, error) {
	home := filepath.Join(s.dir, "fio-home")
	pki := filepath.Join(home, ".pki", "libnbd")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return "", err
	}
	files := []string{tlsCAFile}
	if hasClientCert(s.tlsDir) {
		files = append(files, tlsClientCertFile, tlsClientKeyFile)
	}
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(s.tlsDir, f))
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(pki, f), b, 0o600); err != nil {
			return "", err
		}
	}
	if os.Geteuid() != 0 {
		return home, nil
	}
	for _, p := range []string{home, filepath.Dir(pki), pki, filepath.Join(pki, tlsCAFile),
		filepath.Join(pki, tlsClientCertFile), filepath.Join(pki, tlsClientKeyFile)} {
		if err := os.Chown(p, nobodyID, nobodyID); err != nil &&
			!errors.Is(err, os.ErrNotExist) {
			return "", err
		}
	}
	// s.dir holds only the socket, the server's config and fio's home.
	if err := os.Chmod(s.dir, 0o711); err != nil {
		return "", err
	}
	if err := os.Chmod(filepath.Join(s.dir, "sock"), 0o666); err != nil {
		return "", fmt.Errorf("open %s's socket to fio (run as nobody): %w", s.name, err)
	}
	return home, nil
}

// fioTLSCmd runs cmd in home (from fioTLSHome), as nobody when we are root.
func fioTLSCmd(cmd *exec.Cmd, home string) {
	cmd.Dir = home
	cmd.Env = append(os.Environ(), "HOME="+home)
	if os.Geteuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{
			Uid: nobodyID, Gid: nobodyID}}
	}
}
