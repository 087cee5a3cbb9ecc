package wire

// Session is what the validator needs to know about one connection's
// export and negotiation.
type Session struct {
	Size  uint64  // export size in bytes
	Flags TxFlags // transmission flags advertised to the client
	// BlockMin is the advertised minimum block size (a power of two).
	BlockMin uint32
	// BlockMax is the advertised maximum READ/WRITE length (at most
	// PayloadMax); a longer one is EINVAL, its payload drained. 0: PayloadMax.
	BlockMax uint32
	// Strict is true when the client asked for block sizes (NBD_INFO_BLOCK_SIZE
	// in NBD_OPT_GO), so it promised aligned requests and an unaligned one is
	// EINVAL. A client that never asked is served byte-exactly.
	Strict     bool
	Structured bool // structured replies (or extended headers) negotiated
	Extended   bool // extended headers negotiated
	// BaseAllocation: the base:allocation context was selected for this
	// export, so NBD_CMD_BLOCK_STATUS may be used.
	BaseAllocation bool
	// Zero is what the export can zero (the zero value: any range, fast
	// when the flag was advertised).
	Zero ZeroCaps
}

// ZeroCaps is what an export can do for NBD_CMD_WRITE_ZEROES, known when
// it is opened, so the validator refuses what it cannot do before any
// device work starts. (What only trying can tell, a filesystem refusing
// to zero ranges, the server finds out and answers itself.)
type ZeroCaps struct {
	// Align: the export zeroes whole blocks of Align bytes only (a block
	// device); 0: any range. An unaligned range is then zeroed by reading
	// and writing its blocks, which is not fast (FAST_ZERO: ENOTSUP) and is
	// done only up to RMWMax bytes (EINVAL above).
	Align  uint32
	RMWMax uint32
	// FastNeedsHole: fast zeroing only by unmapping, so FAST_ZERO with
	// NO_HOLE is ENOTSUP.
	FastNeedsHole bool
}

// Refusal texts for the client (an ERROR chunk's message), beside the
// errno Check returns.
const (
	whyZeroUnalignedFast = "unaligned zeroing of a device is not fast"
	whyZeroNoHoleFast    = "zeroing a device without unmapping is not fast"
	whyZeroRMWMax        = "unaligned zeroing larger than the export can zero by " +
		"itself; align the request to the block size"
)

func (s *Session) blockMax() uint64 {
	if s.BlockMax == 0 {
		return PayloadMax
	}
	return uint64(s.BlockMax)
}

// cmdFlagsAllowed lists, per command, the flags it may carry (besides
// CmdFlagPayloadLen, which extended headers allow on any command); a flag
// is further allowed only when its transmission flag was advertised.
// DISC's entry is what proto.md defines; Validate accepts any DISC.
var cmdFlagsAllowed = [CmdCount]CmdFlags{
	CmdRead:        CmdFlagFUA | CmdFlagDF,
	CmdWrite:       CmdFlagFUA,
	CmdDisc:        CmdFlagFUA,
	CmdFlush:       CmdFlagFUA,
	CmdTrim:        CmdFlagFUA,
	CmdCache:       CmdFlagFUA,
	CmdWriteZeroes: CmdFlagFUA | CmdFlagNoHole | CmdFlagFastZero,
	CmdBlockStatus: CmdFlagFUA | CmdFlagReqOne,
}

// cmdServed lists the commands this server implements.
var cmdServed = [CmdCount]bool{
	CmdRead: true, CmdWrite: true, CmdDisc: true, CmdFlush: true,
	CmdTrim: true, CmdCache: true, CmdWriteZeroes: true, CmdBlockStatus: true,
}

// PayloadLen returns how many payload bytes follow the request header:
// a WRITE's data in the compact form; with extended headers, Length when
// CmdFlagPayloadLen is set. ok is false when the payload exceeds
// PayloadMax: the stream cannot be kept in sync within bounded memory and
// time, so the caller must disconnect the client.
func PayloadLen(r *Request, extended bool) (n uint64, ok bool) {
	switch {
	case extended && r.Flags&CmdFlagPayloadLen != 0:
		n = r.Length
	case !extended && r.Type == CmdWrite:
		n = r.Length
	}
	return n, n <= PayloadMax
}

// Validate is Check without the reason.
func (s *Session) Validate(r *Request) Errno {
	e, _ := s.Check(r)
	return e
}

// Check is the one place that checks a request against the protocol
// and the session. It returns EOK for a request to serve, or the error to
// reply with and, where the errno alone does not say it, why (for the
// client, a constant: nothing is allocated); the connection stays usable,
// and any payload (PayloadLen) must still be drained.
func (s *Session) Check(r *Request) (Errno, string) {
	if r.Type >= CmdCount || !cmdServed[r.Type] {
		return EINVAL, ""
	}
	if r.Type == CmdDisc {
		// proto.md, NBD_CMD_DISC: "There is no reply to an NBD_CMD_DISC",
		// and the server "MUST handle all outstanding requests, shut down
		// the TLS session (if one is running), and close the TCP session".
		// So a DISC with flags, an offset or a length it should not have
		// still disconnects: an error reply would be a reply the client
		// does not read, and "a client MUST NOT send anything to the server
		// after sending an NBD_CMD_DISC", so the connection would hang open.
		return EOK, ""
	}
	flags := r.Flags
	if s.Extended {
		// A payload is what WRITE carries and nothing else takes one.
		hasPayload := flags&CmdFlagPayloadLen != 0
		if hasPayload != (r.Type == CmdWrite) {
			return EINVAL, ""
		}
		flags &^= CmdFlagPayloadLen
	}
	if flags&^cmdFlagsAllowed[r.Type] != 0 || !s.flagsAdvertised(flags) {
		return EINVAL, ""
	}
	switch r.Type {
	case CmdFlush:
		return EOK, ""
	case CmdWrite, CmdTrim, CmdWriteZeroes:
		if s.Flags&TxReadOnly != 0 {
			return EPERM, ""
		}
	case CmdBlockStatus:
		if !s.BaseAllocation {
			return EINVAL, "" // no metadata context negotiated
		}
	}
	if r.Length == 0 {
		// proto.md leaves zero-length requests unspecified; refusing them
		// is the answer no client can misread.
		return EINVAL, ""
	}
	if (r.Type == CmdRead || r.Type == CmdWrite) && r.Length > s.blockMax() {
		return EINVAL, ""
	}
	if r.Offset > s.Size || r.Length > s.Size-r.Offset {
		if r.Type == CmdWrite || r.Type == CmdWriteZeroes {
			return ENOSPC, ""
		}
		return EINVAL, ""
	}
	// Block status answers any range; everything else must be aligned
	// when the client promised so.
	if s.Strict && r.Type != CmdBlockStatus && !s.Aligned(r.Offset, r.Length) {
		return EINVAL, ""
	}
	if r.Type == CmdWriteZeroes && s.Zero.Align != 0 {
		return s.Zero.check(r)
	}
	return EOK, ""
}

// check refuses the zeroing the export cannot do (Align != 0).
func (z *ZeroCaps) check(r *Request) (Errno, string) {
	fast := r.Flags&CmdFlagFastZero != 0
	if (r.Offset|r.Length)&(uint64(z.Align)-1) != 0 {
		switch {
		case fast:
			return ENOTSUP, whyZeroUnalignedFast
		case r.Length > uint64(z.RMWMax):
			return EINVAL, whyZeroRMWMax
		}
		return EOK, ""
	}
	if fast && r.Flags&CmdFlagNoHole != 0 && z.FastNeedsHole {
		return ENOTSUP, whyZeroNoHoleFast
	}
	return EOK, ""
}

// Aligned reports whether offset and length are multiples of BlockMin.
func (s *Session) Aligned(offset, length uint64) bool {
	mask := uint64(s.BlockMin) - 1
	return offset&mask == 0 && length&mask == 0
}

func (s *Session) flagsAdvertised(f CmdFlags) bool {
	if f&CmdFlagFUA != 0 && s.Flags&TxSendFUA == 0 {
		return false
	}
	if f&CmdFlagDF != 0 && (s.Flags&TxSendDF == 0 || !s.Structured) {
		return false
	}
	if f&CmdFlagFastZero != 0 && s.Flags&TxSendFastZero == 0 {
		return false
	}
	return true
}
