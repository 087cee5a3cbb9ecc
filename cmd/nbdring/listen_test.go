package main

import (
	"context"
	"net"
)

// plainTCPListen listens on addr with plain TCP, as nbdring's own
// listeners and systemd's do (Go's net.Listen makes Multipath TCP
// listeners where the kernel has MPTCP, whose accepted sockets refuse
// zero-copy): the listeners tests stand in for the server's.
func plainTCPListen(addr string) (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	return lc.Listen(context.Background(), "tcp", addr)
}
