package main

// SIGHUP (systemctl reload): read -config again and apply its exports
// (engine.Server.Reload). A file with any mistake is refused whole, the
// mistake logged as FILE:LINE, and the server keeps serving what it had.

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"

	"github.com/nbdring/nbdring/engine"
	"github.com/nbdring/nbdring/wire"
)

// reloadState is what a reload needs from the start: the file, the
// listen addresses it gave, and -tls-exports.
type reloadState struct {
	file       string          // -config; "": exports came from the command line
	listen     []string        // the file's listen at start
	tlsExports map[string]bool // -tls-exports
}

// reloadOnHUP reloads the exports on each SIGHUP until the process ends.
func (o *options) reloadOnHUP(srv *engine.Server, hup <-chan os.Signal, ntf *notifier) {
	for range hup {
		if o.reload.file == "" {
			slog.Info("SIGHUP: no -config file to reload (the exports came from the " +
				"command line); nothing changes: to change exports at run time, start " +
				"nbdring with -config FILE")
			continue
		}
		ntf.reloading()
		if err := o.reloadConfig(srv); err != nil {
			slog.Error(fmt.Sprintf("SIGHUP: reload refused: %v; still serving the "+
				"exports as before", err))
			ntf.ready("reload refused; serving as before")
			continue
		}
		ntf.ready("reloaded " + o.reload.file)
	}
}

// reloadConfig reads the file and hands its exports to the server.
func (o *options) reloadConfig(srv *engine.Server) error {
	sc, err := loadConfig(o.reload.file)
	if err != nil {
		return err
	}
	if !slices.Equal(sc.listen, o.reload.listen) {
		// Rebinding would mean closing sockets clients use (and, after
		// -user, binding without the privilege): a restart's job.
		slog.Warn(fmt.Sprintf("SIGHUP: %s: listen changed from %q to %q: not applied "+
			"(restart nbdring to listen elsewhere); the exports are reloaded",
			o.reload.file, o.reload.listen, sc.listen))
	}
	tls := o.cfg.TLSMode
	for i := range sc.exports {
		ec := &sc.exports[i]
		ec.ReadOnly = ec.ReadOnly || o.readOnly
		ec.Inline = o.inline
		if ec.TLSOnly && tls == wire.TLSOff {
			return fmt.Errorf("%stls-required = true needs -tls on (or -tls require) "+
				"and -tls-certificates, given at start", sc.tlsWhere[i])
		}
		ec.TLSOnly = ec.TLSOnly || o.reload.tlsExports[ec.Name]
	}
	err = srv.Reload(sc.exports)
	var ee *engine.ExportError
	if errors.As(err, &ee) && ee.Index < len(sc.where) {
		return fmt.Errorf("%s%w", sc.where[ee.Index], ee.Err)
	}
	return err
}
