package wire

// Session is what the validator needs to know about one connection's
// export and negotiation.
type Session struct {
	Size  uint64  // export size in bytes
	Flags TxFlags // transmission flags advertised to the client
	// BlockMin is the advertised minimum block size (a power of two).
	BlockMin uint32
	// Strict is true when the client asked for block sizes (NBD_INFO_BLOCK_SIZE
	// in NBD_OPT_GO), so it promised aligned requests and an unaligned one is
	// EINVAL. A client that never asked is served byte-exactly.
	Strict     bool
	Structured bool
}

// cmdFlagsAllowed lists, per command, the flags it may carry; a flag is
// further allowed only when its transmission flag was advertised.
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
	CmdTrim: true, CmdWriteZeroes: true,
}

// WritePayloadOK reports whether a request's payload (WRITE data) is small
// enough to read and, if rejected, drain. When it is not, the stream cannot
// be kept in sync within bounded memory and time: the caller must
// disconnect the client.
func WritePayloadOK(r *Request) bool {
	return r.Type != CmdWrite || r.Length <= PayloadMax
}

// Validate is the one place that checks a request against the protocol
// and the session. It returns EOK for a request to serve, or the error to
// reply with (the connection stays usable; a WRITE's payload must still be
// drained).
func (s *Session) Validate(r *Request) Errno {
	if r.Type >= CmdCount || !cmdServed[r.Type] {
		return EINVAL
	}
	if r.Flags&^cmdFlagsAllowed[r.Type] != 0 || !s.flagsAdvertised(r.Flags) {
		return EINVAL
	}
	switch r.Type {
	case CmdDisc, CmdFlush:
		return EOK
	case CmdWrite, CmdTrim, CmdWriteZeroes:
		if s.Flags&TxReadOnly != 0 {
			return EPERM
		}
	}
	if r.Length == 0 {
		// proto.md leaves zero-length requests unspecified; refusing them
		// is the answer no client can misread.
		return EINVAL
	}
	if (r.Type == CmdRead || r.Type == CmdWrite) && r.Length > PayloadMax {
		return EINVAL
	}
	if r.Offset > s.Size || uint64(r.Length) > s.Size-r.Offset {
		if r.Type == CmdWrite || r.Type == CmdWriteZeroes {
			return ENOSPC
		}
		return EINVAL
	}
	if s.Strict && !s.Aligned(r.Offset, r.Length) {
		return EINVAL
	}
	return EOK
}

// Aligned reports whether offset and length are multiples of BlockMin.
func (s *Session) Aligned(offset uint64, length uint32) bool {
	mask := uint64(s.BlockMin) - 1
	return offset&mask == 0 && uint64(length)&mask == 0
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
