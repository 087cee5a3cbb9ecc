package engine

// TLS. The handshake (NBD_OPT_STARTTLS and the TLS handshake after it)
// runs on the control plane like the rest of the option phase; from then
// on the connection is served by its shard like any other, with no
// goroutine of its own: crypto/tls runs over a tlsPipe, a net.Conn whose
// Read and Write reach the real socket only during the handshake. At
// hand-off the pipe switches to buffer mode: Read returns the ciphertext
// the shard has received (or, when none is left, an error whose
// Temporary() is true, which crypto/tls treats as "try again": see
// readRecordOrCCS in crypto/tls/conn.go), and Write appends ciphertext
// to a buffer the shard sends through the ledger (opSendTLS).
//
// Per TLS connection, mapped at hand-off and unmapped at release (so
// bounded by connsPerShardMax per shard): a ciphertext receive buffer
// (tlsInBufSize), a ciphertext send buffer (tlsOutBufSize plus
// tlsOutReserve for what crypto/tls writes on its own: alerts, KeyUpdate
// answers), one record's plaintext (tlsRecordPlainMax), where reply
// headers and data are gathered so that each record is full and a slot
// is released as soon as its bytes are copied, and the received plaintext
// the connection parses (recvBufSize; plaintext connections parse the
// shard's receive pool instead).

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	"github.com/nbdring/nbdring/ring"
	"golang.org/x/sys/unix"
)

// TLS certificate directory layout shared by qemu (tls-creds-x509) and
// nbdkit (--tls-certificates).
const (
	tlsCAFile   = "ca-cert.pem"
	tlsCertFile = "server-cert.pem"
	tlsKeyFile  = "server-key.pem"
	tlsCRLFile  = "ca-crl.pem"
)

// LoadTLS reads dir's certificates into a server configuration. With
// verifyPeer, clients must present a certificate signed by dir's CA.
// A ca-crl.pem, if present, revokes client certificates.
func LoadTLS(dir string, verifyPeer bool) (*tls.Config, error) {
	if dir == "" {
		return nil, errors.New("-tls needs -tls-certificates DIR (with ca-cert.pem, " +
			"server-cert.pem and server-key.pem)")
	}
	certPath, keyPath := filepath.Join(dir, tlsCertFile), filepath.Join(dir, tlsKeyFile)
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, fmt.Errorf("load TLS key pair %s and %s: %w (both must be PEM; "+
			"the key must match the certificate)", certPath, keyPath, err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12, // proto.md: MUST support 1.2; 1.3 is preferred
		// Full 16 KiB records from the first byte: block I/O wants
		// throughput, not the first-packet latency small records buy.
		DynamicRecordSizingDisabled: true,
	}
	caPath := filepath.Join(dir, tlsCAFile)
	caPEM, err := os.ReadFile(caPath)
	if err != nil {
		if !verifyPeer && errors.Is(err, os.ErrNotExist) {
			return cfg, nil
		}
		return nil, fmt.Errorf("read TLS CA %s: %w (-tls-verify-peer needs the CA that "+
			"signs client certificates)", caPath, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("TLS CA %s holds no PEM certificate; regenerate it", caPath)
	}
	if !verifyPeer {
		return cfg, nil
	}
	revoked, err := loadCRL(dir, caPEM)
	if err != nil {
		return nil, err
	}
	// No ClientCAs: see verifyClient for why the certificate_authorities
	// list stays empty; verifyClient does what ClientCAs would have done.
	cfg.ClientAuth = tls.RequireAnyClientCert
	cfg.VerifyConnection = verifyClient(pool, revoked)
	return cfg, nil
}

// tlsVerifiesPeer tells whether cfg (from LoadTLS) admits only clients
// whose certificate verifyClient accepted.
func tlsVerifiesPeer(cfg *tls.Config) bool {
	return cfg != nil && cfg.ClientAuth == tls.RequireAnyClientCert &&
		cfg.VerifyConnection != nil
}

// verifyClient checks a client's certificate the way crypto/tls does with
// ClientCAs and RequireAndVerifyClientCert (a chain to a CA of pool, for
// client authentication, valid now), then against the CRL. It runs as
// VerifyConnection, so on resumed sessions too; crypto/tls has already
// checked that the client holds the certificate's key (CertificateVerify).
//
// Why not ClientCAs: with it, crypto/tls names the CA's subject in the
// CertificateRequest (certificate_authorities), and a GnuTLS client
// (libnbd's nbdinfo, nbdcopy; qemu) given such a list presents its
// certificate only if the key's algorithm is also among those the
// request's signature algorithms map to (GnuTLS 3.7, lib/auth/cert.c
// find_x509_client_cert; lib/tls13/certificate_request.c). In TLS 1.3,
// crypto/tls lists RSA only as rsa_pss_rsae_* (RFC 8446 allows no
// PKCS#1 v1.5 in CertificateVerify), which GnuTLS maps to RSA-PSS, not
// RSA: an RSA client key (certtool's and openssl's default) never
// matches, so GnuTLS sends no certificate and the handshake fails with
// "client didn't provide a certificate". GnuTLS servers (qemu-nbd,
// nbdkit) list rsa_pkcs1_sha256 too, which maps to RSA. With an empty
// list, GnuTLS presents its one certificate whatever its key, and signs
// with rsa_pss_rsae_sha256, which crypto/tls accepts. The list is only a
// hint (RFC 8446 4.2.4); leaving it out changes no check.
func verifyClient(pool *x509.CertPool,
	revoked map[string]string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("client sent no certificate (-tls-verify-peer needs one " +
				"signed by the CA in ca-cert.pem)")
		}
		opts := x509.VerifyOptions{
			Roots:         pool,
			Intermediates: x509.NewCertPool(),
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		for _, c := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(c)
		}
		leaf := cs.PeerCertificates[0]
		chains, err := leaf.Verify(opts)
		if err != nil {
			return fmt.Errorf("client certificate %q: %w", leaf.Subject, err)
		}
		for _, chain := range chains {
			for _, c := range chain {
				if crl, ok := revoked[string(c.SerialNumber.Bytes())]; ok {
					return fmt.Errorf("certificate %q (serial %x) is revoked by %s",
						c.Subject, c.SerialNumber, crl)
				}
			}
		}
		return nil
	}
}

// loadCRL reads dir's ca-crl.pem, if there is one, into the serial
// numbers it revokes (each mapped to the CRL's path, for the error).
func loadCRL(dir string, caPEM []byte) (map[string]string, error) {
	crlPath := filepath.Join(dir, tlsCRLFile)
	crlPEM, err := os.ReadFile(crlPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read TLS CRL %s: %w", crlPath, err)
	}
	crl, err := parseCRL(crlPEM, caPEM)
	if err != nil {
		return nil, fmt.Errorf("TLS CRL %s: %w (regenerate it with the CA in %s, or "+
			"remove it)", crlPath, err, filepath.Join(dir, tlsCAFile))
	}
	revoked := map[string]string{}
	for _, e := range crl.RevokedCertificateEntries {
		revoked[string(e.SerialNumber.Bytes())] = crlPath
	}
	return revoked, nil
}

// parseCRL decodes a PEM CRL and checks it was signed by one of caPEM's
// certificates.
func parseCRL(crlPEM, caPEM []byte) (*x509.RevocationList, error) {
	der, err := pemBlock(crlPEM, "X509 CRL")
	if err != nil {
		return nil, err
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, err
	}
	for rest := caPEM; ; {
		var der []byte
		der, rest, err = pemNext(rest, "CERTIFICATE")
		if err != nil {
			return nil, errors.New("not signed by the CA")
		}
		ca, perr := x509.ParseCertificate(der)
		if perr == nil && crl.CheckSignatureFrom(ca) == nil {
			return crl, nil
		}
	}
}

func pemBlock(b []byte, typ string) ([]byte, error) {
	der, _, err := pemNext(b, typ)
	return der, err
}

// pemNext returns the next PEM block of type typ in b and what follows it.
func pemNext(b []byte, typ string) (der, rest []byte, err error) {
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			return nil, nil, fmt.Errorf("no PEM %q block", typ)
		}
		if blk.Type == typ {
			return blk.Bytes, b, nil
		}
	}
}

var errWouldBlock net.Error = wouldBlock{}

// wouldBlock is what a handed-off tlsPipe's Read returns when the shard
// has no more ciphertext: Timeout and Temporary, so crypto/tls keeps the
// connection and the partial record it holds and lets Read be called
// again after the next receive.
type wouldBlock struct{}

func (wouldBlock) Error() string   { return "tls pipe: no ciphertext received yet" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

var errTLSOutFull = errors.New("tls pipe: send buffer full")

// tlsPipe is the net.Conn under a connection's tls.Conn (see the top of
// this file).
type tlsPipe struct {
	nc  net.Conn // during the handshake: the socket; nil once handed off
	mem []byte   // the mapping that in, out and plain live in

	in         []byte // ciphertext received: in[inLo:inHi] not yet read by TLS
	inLo, inHi int
	out        []byte // ciphertext to send: out[outLo:outHi]
	outLo      int
	outHi      int
	sendEnd    int    // the send in flight covers out[outLo:sendEnd]
	plain      []byte // one record's plaintext, gathered from replies
	stage      []byte // received plaintext, parsed as the rx cursor's window
	plainN     int
}

var _ net.Conn = (*tlsPipe)(nil)

func (p *tlsPipe) Read(b []byte) (int, error) {
	if p.nc != nil {
		return p.nc.Read(b)
	}
	if p.inLo == p.inHi {
		return 0, errWouldBlock
	}
	n := copy(b, p.in[p.inLo:p.inHi])
	p.inLo += n
	return n, nil
}

func (p *tlsPipe) Write(b []byte) (int, error) {
	if p.nc != nil {
		return p.nc.Write(b)
	}
	if len(b) > len(p.out)-p.outHi {
		return 0, errTLSOutFull
	}
	p.outHi += copy(p.out[p.outHi:], b)
	return len(b), nil
}

func (p *tlsPipe) Close() error {
	if p.nc != nil {
		return p.nc.Close()
	}
	return nil
}

func (p *tlsPipe) LocalAddr() net.Addr {
	if p.nc != nil {
		return p.nc.LocalAddr()
	}
	return nil
}

func (p *tlsPipe) RemoteAddr() net.Addr {
	if p.nc != nil {
		return p.nc.RemoteAddr()
	}
	return nil
}

func (p *tlsPipe) SetDeadline(t time.Time) error {
	if p.nc != nil {
		return p.nc.SetDeadline(t)
	}
	return nil
}

func (p *tlsPipe) SetReadDeadline(t time.Time) error {
	if p.nc != nil {
		return p.nc.SetReadDeadline(t)
	}
	return nil
}

func (p *tlsPipe) SetWriteDeadline(t time.Time) error {
	if p.nc != nil {
		return p.nc.SetWriteDeadline(t)
	}
	return nil
}

// tlsState is a TLS connection's part on its shard.
type tlsState struct {
	tc   *tls.Conn
	pipe *tlsPipe
	// more: the last pump stopped because the staging buffer was full, so
	// crypto/tls may still hold plaintext; it is read before receiving.
	more bool
	eof  bool // the client sent close_notify: read no more
	bye  bool // our close_notify is written
	// The encryption cursor within the first queued reply (its iovec
	// and the byte within it).
	iov, off int
}

// tlsMemSize is the mapping one TLS connection takes at hand-off.
const tlsMemSize = tlsInBufSize + tlsOutBufSize + tlsOutReserve + tlsRecordPlainMax +
	recvBufSize

// newTLSPipe wraps the socket for the handshake.
func newTLSPipe(nc net.Conn) *tlsPipe { return &tlsPipe{nc: nc} }

// handOff switches the pipe to buffer mode, mapping its buffers; the
// socket is no longer the pipe's (the shard owns a duplicate of it).
func (p *tlsPipe) handOff() error {
	mem, err := unix.Mmap(-1, 0, tlsMemSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("map %d KiB of TLS buffers: %w", tlsMemSize>>10, err)
	}
	p.nc, p.mem = nil, mem
	p.in = mem[:tlsInBufSize:tlsInBufSize]
	mem = mem[tlsInBufSize:]
	p.out = mem[: tlsOutBufSize+tlsOutReserve : tlsOutBufSize+tlsOutReserve]
	mem = mem[tlsOutBufSize+tlsOutReserve:]
	p.plain = mem[:tlsRecordPlainMax:tlsRecordPlainMax]
	p.stage = mem[tlsRecordPlainMax:]
	return nil
}

func (p *tlsPipe) release() {
	if p.mem != nil {
		_ = unix.Munmap(p.mem)
		p.mem, p.in, p.out, p.plain, p.stage = nil, nil, nil, nil, nil
	}
}

// armRecvTLS receives ciphertext, unless crypto/tls may still hold
// plaintext: then the connection's parse is queued (follow-up work is
// queued, not recursed into) and pumps it first.
func (s *shard) armRecvTLS(ci int32) {
	c := &s.conns.rows[ci]
	t := c.tls
	p := t.pipe
	if t.eof {
		c.disc = true // close_notify: answer what was sent, then close
		s.maybeFinish(ci)
		return
	}
	if t.more {
		if !s.rx.stageFull(ci) {
			s.conns.park(ci)
		}
		return
	}
	if p.inLo > 0 {
		p.inHi = copy(p.in, p.in[p.inLo:p.inHi])
		p.inLo = 0
	}
	// crypto/tls reports would-block only once it has read the pipe dry,
	// so without plaintext pending (more) the buffer has room.
	assert(p.inHi < len(p.in), "TLS ciphertext buffer full with nothing pending")
	if p.inHi == len(p.in) {
		return
	}
	c.recvOn = true
	ring.PrepRecv(s.issue(opRecv, ci), c.fd, bytesAt(p.in[p.inHi:]), uint32(len(p.in)-p.inHi))
}

// tlsPump decrypts received ciphertext into the staging buffer until
// crypto/tls would block or the buffer is full; false: the connection is
// closing (a TLS alert, a bad record).
func (s *shard) tlsPump(ci int32) bool {
	c := &s.conns.rows[ci]
	t := c.tls
	room := s.rx.stage(ci)
	t.more = false
	for !t.eof && len(room) > 0 {
		n, err := t.tc.Read(room)
		s.rx.staged(ci, n)
		room = room[n:]
		if err == nil {
			continue
		}
		if err == errWouldBlock {
			break
		}
		if err == io.EOF {
			t.eof = true // close_notify
			break
		}
		slog.Warn(fmt.Sprintf("TLS: %v; disconnecting it", err), "client", c.peer,
			"shard", s.id)
		s.beginClose(ci, closeTLSErr)
		return false
	}
	t.more = len(room) == 0 && !t.eof
	if t.pipe.outHi > t.pipe.outLo && !s.tx.busy(ci) {
		s.submitSendTLS(ci) // what crypto/tls wrote on its own (a KeyUpdate answer)
	}
	return true
}

// sendQueuedTLS encrypts queued replies into the send buffer, a record at
// a time, and sends it. A reply whose bytes are all copied is released at
// once; one too large for the buffer is continued after the send.
func (s *shard) sendQueuedTLS(ci int32) {
	c := &s.conns.rows[ci]
	t := c.tls
	var err error
	for si := s.tx.front(ci); si >= 0; si = s.tx.front(ci) {
		var done bool
		if done, err = t.seal(&s.slots.rows[si]); !done {
			break // the buffer is full (go on after the send), or an error
		}
		s.tx.pop(ci)
		s.releaseSlot(si) // every byte is in a record or in the plaintext buffer
	}
	if err == nil {
		err = t.write()
	}
	if err != nil {
		slog.Warn(fmt.Sprintf("TLS: %v; disconnecting it", err), "client", c.peer,
			"shard", s.id)
		s.beginClose(ci, closeTLSErr)
		return
	}
	if t.pipe.outHi > t.pipe.outLo {
		s.submitSendTLS(ci)
	}
}

// seal copies reply sl, from the encryption cursor on, into the
// plaintext buffer, sealing a record into the send buffer each time that
// fills, while the send buffer has room for another record. done: every
// byte of sl is in a record or in the plaintext buffer (the cursor is
// reset for the next reply); false: the send buffer is full, or err.
func (t *tlsState) seal(sl *slot) (done bool, err error) {
	p := t.pipe
	if p.outHi > tlsOutBufSize-tlsRecordCipherMax {
		return false, nil
	}
	for t.iov < sl.nout && p.outHi <= tlsOutBufSize-tlsRecordCipherMax {
		v := &sl.out[t.iov]
		b := unsafe.Slice(v.Base, v.Len)[t.off:]
		n := copy(p.plain[p.plainN:], b)
		p.plainN += n
		t.off += n
		if t.off == int(v.Len) {
			t.iov, t.off = t.iov+1, 0
		}
		if p.plainN == len(p.plain) {
			if err := t.write(); err != nil {
				return false, err
			}
		}
	}
	if t.iov < sl.nout {
		return false, nil
	}
	t.iov, t.off = 0, 0
	return true, nil
}

// write seals the gathered plaintext, if any, into the send buffer.
func (t *tlsState) write() error {
	p := t.pipe
	if p.plainN == 0 {
		return nil
	}
	_, err := t.tc.Write(p.plain[:p.plainN])
	p.plainN = 0
	return err
}

func (s *shard) submitSendTLS(ci int32) {
	c := &s.conns.rows[ci]
	p := c.tls.pipe
	msg := s.tx.submitBytes(ci, p.out[p.outLo:p.outHi])
	p.sendEnd = p.outHi
	ring.PrepSendmsg(s.issue(opSendTLS, ci), c.fd, msg)
}

// closeNotify writes close_notify before a graceful close (after
// NBD_CMD_DISC, the client's close_notify, or the server's shutdown), so
// the client can tell the end of the stream from a cut; true: the caller
// sends it (submitSendTLS), false: nothing to send, close now.
func (t *tlsState) closeNotify() bool {
	if t.bye {
		return false
	}
	t.bye = true
	err := t.tc.CloseWrite()
	return err == nil && t.pipe.outHi > t.pipe.outLo
}

// onSendTLS resumes a partial send, sends what was appended meanwhile, or
// encrypts the next replies.
func (s *shard) onSendTLS(ci int32, res int32) {
	c := &s.conns.rows[ci]
	s.tx.sentBytes(ci)
	if c.closing || res < 0 {
		why := s.conns.sendCloseWhy(ci, res)
		if c.closing {
			s.maybeRelease(ci)
		} else {
			s.beginClose(ci, why)
		}
		return
	}
	p := c.tls.pipe
	p.outLo += int(res)
	if p.outLo < p.outHi {
		s.submitSendTLS(ci) // partial, or bytes appended while it was in flight
		return
	}
	p.outLo, p.outHi = 0, 0
	s.sendQueued(ci)
	s.maybeFinish(ci)
}
