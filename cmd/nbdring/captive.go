package main

// Captive mode (-run), after nbdkit-captive(1): the server runs only as
// long as one command does, which reaches it through $uri.

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nbdring/nbdring/engine"
	"github.com/nbdring/nbdring/wire"
)

// captiveExit carries the command's exit status out of run, so main
// exits with it.
type captiveExit struct{ status int }

func (e *captiveExit) Error() string { return fmt.Sprintf("-run: exit status %d", e.status) }

// captiveEnv is what the command finds in its environment, with
// nbdkit's names: $uri and $nbd (the same URI, as nbdkit >= 1.24 sets
// them), $port or $unixsocket (the other one empty), $exportname. nbdkit
// sets them as shell variables only; nbdring exports them, so a program
// the command starts sees them too. $tls is nbdkit's too: unset with
// -tls off, 1 with -tls on, 2 with -tls require (and then $uri is nbds:).
func captiveEnv(l listener, export string, mode wire.TLSMode) []string {
	uri := clientURI(l.listen, l.ln.Addr(), export)
	tls := ""
	switch mode {
	case wire.TLSOn:
		tls = "1"
	case wire.TLSRequire:
		tls, uri = "2", "nbds"+strings.TrimPrefix(uri, "nbd")
	}
	port, sock := "", ""
	switch a := l.ln.Addr().(type) {
	case *net.TCPAddr:
		port = strconv.Itoa(a.Port)
	case *net.UnixAddr:
		sock = a.Name
	}
	env := []string{"uri=" + uri, "nbd=" + uri, "port=" + port, "unixsocket=" + sock,
		"exportname=" + export}
	if tls != "" {
		env = append(env, "tls="+tls)
	}
	return env
}

// commandEnv is nbdring's environment for the command, less what is
// nbdring's own (readiness goes to the manager from nbdring, not from the
// command), plus vars.
func commandEnv(vars []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NOTIFY_SOCKET=") {
			env = append(env, kv)
		}
	}
	return append(env, vars...)
}

// runCaptive runs command through /bin/sh -c, with env (captiveEnv) added
// to its environment, while srv serves; then it
// stops srv; it returns the command's status as a *captiveExit (or the
// server's error). SIGINT and SIGTERM go on to the command; a second one
// kills it and exits at once.
func runCaptive(command string, env []string, srv *engine.Server,
	sig <-chan os.Signal, errc <-chan error, ntf *notifier) error {
	cmd := exec.Command("/bin/sh", "-c", command)
	cmd.Env = commandEnv(env)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		srv.Stop()
		return fmt.Errorf("-run: start /bin/sh: %w", err)
	}
	slog.Info(fmt.Sprintf("-run: command started (pid %d); serving until it exits",
		cmd.Process.Pid), "pid", cmd.Process.Pid)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-done:
	case s := <-sig:
		ntf.stopping()
		slog.Info(fmt.Sprintf("%v: passing it on to the -run command (pid %d); the server "+
			"stops when it exits (send it again to exit at once)", s, cmd.Process.Pid))
		_ = cmd.Process.Signal(s)
		first := time.Now()
	wait:
		for {
			select {
			case werr = <-done:
				break wait
			case s := <-sig:
				if time.Since(first) < signalRepeatMin {
					continue // the same request delivered twice (see signalRepeatMin)
				}
				_ = cmd.Process.Kill()
				<-done
				return fmt.Errorf("%v again: killed the -run command; exiting at once, "+
					"without waiting for connections or a final fdatasync", s)
			}
		}
	case err := <-errc:
		_ = cmd.Process.Kill()
		<-done
		srv.Stop()
		return err
	}
	status := exitStatus(werr)
	slog.Info(fmt.Sprintf("-run: command exited with status %d; stopping the server",
		status), "status", status)
	if err := stop(srv, sig); err != nil {
		slog.Error(err.Error())
		if status == 0 {
			status = 1
		}
	}
	return &captiveExit{status: status}
}

// exitStatus is the status a shell would report for Wait's result: the
// exit code, or 128 + the signal that killed the command.
func exitStatus(err error) int {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		if err != nil {
			return 1
		}
		return 0
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ee.ExitCode()
}
