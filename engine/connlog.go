package engine

import (
	"log/slog"
	"time"
)

// closeReason is why a connection closed, for its close line in the log.
// beginClose records the first reason given; later ones are ignored, so
// a send error after a protocol error still reports the protocol error.
type closeReason uint8

const (
	closeUnknown  closeReason = iota // a defect: every beginClose names one
	closeClient                      // the client hung up (EOF, ECONNRESET, EPIPE)
	closeDisc                        // NBD_CMD_DISC, once its requests were answered
	closeProtocol                    // a request the protocol cannot resync from
	closeShutdown                    // server shutdown, after answering what was sent
	closeCut                         // still open when the shutdown grace ran out
	closeRecvErr                     // recv failed with another error
	closeSendErr                     // send failed with another error
	closeTLSErr                      // a TLS record or alert error
	closeTimeout                     // no progress for -io-timeout while the server waited on it
)

var closeReasonNames = [...]string{
	closeUnknown: "unknown", closeClient: "client disconnect", closeDisc: "DISC",
	closeProtocol: "protocol error", closeShutdown: "server shutdown",
	closeCut: "cut at shutdown", closeRecvErr: "recv error", closeSendErr: "send error",
	closeTLSErr: "TLS error", closeTimeout: "io timeout",
}

// abortive reports whether a close with this reason resets the connection
// at once: the server gives up on the client (a cut, a timeout, a stream
// it cannot follow or a socket that failed), so nothing queued for it needs
// to arrive. The others close in order: every reply sent reaches the client.
func (r closeReason) abortive() bool {
	switch r {
	case closeCut, closeTimeout, closeProtocol, closeRecvErr, closeSendErr:
		return true
	}
	return false
}

func (r closeReason) String() string {
	if int(r) < len(closeReasonNames) {
		return closeReasonNames[r]
	}
	return "unknown"
}

// logConnect is a connection's first line: who, which export, which shard.
// Once per connection, never per request.
func (t *connTable) logConnect(ci int32) {
	c := &t.rows[ci]
	slog.Info("connection", "client", c.peer, "export", c.exp.Name, "shard", t.shard,
		"tls", c.tls != nil)
}

// logClose is a connection's last line: what it did and why it ended.
func (t *connTable) logClose(ci int32) {
	c := &t.rows[ci]
	slog.Info("connection closed", "client", c.peer, "export", c.exp.Name, "shard", t.shard,
		"tls", c.tls != nil, "requests", c.served,
		"duration", time.Since(c.started).Round(time.Millisecond).String(),
		"reason", c.closeWhy.String())
}
