package engine

import (
	"fmt"
	"io"

	"github.com/nbdring/nbdring/wire"
)

// WriteCounters writes every shard's counters as plain text, one shard a
// block, for the -pprof page /counters. Values are read without stopping
// the shards, so a line may be a moment older than the next.
func (s *Server) WriteCounters(w io.Writer) {
	for _, sh := range s.shards {
		st := &sh.stats
		fmt.Fprintf(w, "shard %d (cpu %d)\n", sh.id, sh.cpu)
		fmt.Fprintf(w, "  connections           %d\n", st.Conns.Load())
		fmt.Fprintf(w, "  in_flight             %d\n", st.Inflight.Load())
		fmt.Fprintf(w, "  arena_bytes_in_use    %d\n", st.ArenaBytes.Load())
		fmt.Fprintf(w, "  kernel_ops_in_flight  %d\n", st.OpsInflight.Load())
		fmt.Fprintf(w, "  stale_completions     %d\n", st.Stale.Load())
		fmt.Fprintf(w, "  sends_zerocopy        %d\n", st.SendsZC.Load())
		fmt.Fprintf(w, "  zerocopy_copied       %d\n", st.ZCCopied.Load())
		fmt.Fprintf(w, "  zerocopy_refused      %d\n", st.ZCRefused.Load())
		fmt.Fprintf(w, "  inline_ops            %d\n", st.InlineOps.Load())
		for c := wire.Cmd(0); c < wire.CmdCount; c++ {
			if n := st.Requests[c].Load(); n > 0 {
				fmt.Fprintf(w, "  requests_%-12s %d\n", c.String()[len("NBD_CMD_"):], n)
			}
		}
		fmt.Fprintf(w, "  bytes_read            %d\n", st.BytesRead.Load())
		fmt.Fprintf(w, "  bytes_written         %d\n", st.BytesWritten.Load())
		fmt.Fprintf(w, "  errors                %d\n", st.Errors.Load())
		if r := sh.ring; r != nil {
			enters, subs := r.Stats.Enters.Load(), r.Stats.Submitted.Load()
			comps := r.Stats.Completions.Load()
			fmt.Fprintf(w, "  ring_enters           %d\n", enters)
			fmt.Fprintf(w, "  ring_submissions      %d\n", subs)
			fmt.Fprintf(w, "  ring_completions      %d\n", comps)
			if enters > 0 {
				fmt.Fprintf(w, "  submissions_per_enter %.2f\n", float64(subs)/float64(enters))
				fmt.Fprintf(w, "  completions_per_enter %.2f\n", float64(comps)/float64(enters))
			}
		}
	}
}
