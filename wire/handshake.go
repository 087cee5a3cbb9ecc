package wire

import (
	"errors"
	"fmt"
	"strconv"
)

// Export describes one export as the handshake advertises it.
type Export struct {
	Name        string
	Description string
	Size        uint64
	Flags       TxFlags
	// Block size constraints (NBD_INFO_BLOCK_SIZE).
	BlockMin       uint32
	BlockPreferred uint32
	BlockMax       uint32
	// TLSOnly: served only after NBD_OPT_STARTTLS (proto.md SELECTIVETLS);
	// hidden from NBD_OPT_LIST and refused with NBD_REP_ERR_TLS_REQD
	// before it.
	TLSOnly bool
}

// TLSMode is the server's TLS policy (proto.md "TLS support").
type TLSMode uint8

const (
	TLSOff     TLSMode = iota // NOTLS: NBD_OPT_STARTTLS gets NBD_REP_ERR_POLICY
	TLSOn                     // SELECTIVETLS: TLS at the client's choice, TLSOnly exports need it
	TLSRequire                // FORCEDTLS: every option but STARTTLS and ABORT needs TLS
)

func (m TLSMode) String() string {
	switch m {
	case TLSOff:
		return "off"
	case TLSOn:
		return "on"
	case TLSRequire:
		return "require"
	}
	return "TLSMode(" + strconv.Itoa(int(m)) + ")"
}

// Bounds of the option phase: together they cap what one client can make
// the server buffer (OptionDataMax) and how long it can keep a handshake
// going (OptionRoundsMax) before it must pick an export.
const (
	// OptionDataMax caps one option's data: a GO with a 4096-byte name and
	// every info item fits many times over; larger is hostile.
	OptionDataMax = 64 << 10
	// OptionRoundsMax caps options per handshake; real clients use < 10.
	OptionRoundsMax = 64
	// infoRequestsMax caps NBD_INFO items in one GO/INFO; there are 4 kinds.
	infoRequestsMax = 64
	// metaQueriesMax caps queries in one LIST/SET_META_CONTEXT; one
	// namespace is served, so more than a handful is noise.
	metaQueriesMax = 128
)

// MetaIDBaseAllocation is the context ID given to base:allocation.
const MetaIDBaseAllocation = 1

// Step tells the caller what to do after sending an option's reply.
type Step uint8

const (
	StepContinue Step = iota // read the next option
	StepServe                // enter the transmission phase
	StepClose                // close the connection
	// StepStartTLS: after sending the reply (NBD_REP_ACK to
	// NBD_OPT_STARTTLS), run the TLS handshake as the server, then read
	// every further option through TLS. The caller must not have read
	// past the option's data: bytes the client sent after STARTTLS belong
	// to TLS and are never parsed as NBD.
	StepStartTLS
)

// Negotiated is the outcome of a handshake that reached StepServe.
type Negotiated struct {
	Export     int  // index into the exports given to NewServerHandshake
	Structured bool // NBD_OPT_STRUCTURED_REPLY was acknowledged
	// BlockSizeAsked: the client requested NBD_INFO_BLOCK_SIZE in GO, so it
	// agreed to honour the advertised constraints.
	BlockSizeAsked bool
	Extended       bool    // NBD_OPT_EXTENDED_HEADERS was acknowledged
	BaseAllocation bool    // base:allocation selected for this export
	Flags          TxFlags // transmission flags sent to the client
}

// Style is the reply style the negotiation agreed on.
func (n *Negotiated) Style() ReplyStyle {
	switch {
	case n.Extended:
		return StyleExtended
	case n.Structured:
		return StyleStructured
	}
	return StyleSimple
}

// ServerHandshake is the server's option-haggling state machine: bytes in,
// reply bytes and a decision out. It does no I/O.
type ServerHandshake struct {
	exports     []Export
	tlsMode     TLSMode
	tls         bool // NBD_OPT_STARTTLS was acknowledged: everything since is over TLS
	noZeroes    bool
	fixed       bool
	structured  bool
	extended    bool
	metaExport  string // export of the last SET_META_CONTEXT
	metaBase    bool   // it selected base:allocation
	rounds      int
	out         []byte
	Result      Negotiated
	closeReason string
	denied      []bool // exports this client may not see (Deny)
}

// NewServerHandshake starts a handshake offering exports.
func NewServerHandshake(exports []Export) *ServerHandshake {
	return &ServerHandshake{exports: exports}
}

// SetTLS sets the TLS policy; TLSOff unless called. Call it before the
// first option.
func (h *ServerHandshake) SetTLS(m TLSMode) { h.tlsMode = m }

// TLS reports whether STARTTLS was acknowledged.
func (h *ServerHandshake) TLS() bool { return h.tls }

// CloseReason says why the state machine chose StepClose or an error.
func (h *ServerHandshake) CloseReason() string { return h.closeReason }

// Greeting returns the server's first 18 bytes.
func (h *ServerHandshake) Greeting() []byte {
	b := make([]byte, GreetingSize)
	be.PutUint64(b[0:], MagicInit)
	be.PutUint64(b[8:], MagicOpts)
	be.PutUint16(b[16:], FlagFixedNewstyle|FlagNoZeroes)
	return b
}

// ClientFlags takes the client's 4-byte flags. Unknown flags are an error:
// proto.md says the server MUST close then.
func (h *ServerHandshake) ClientFlags(b []byte) error {
	f := be.Uint32(b[:4])
	if f&^clientFlagsKnown != 0 {
		return fmt.Errorf("nbd: unknown client flags %#x", f)
	}
	h.fixed = f&ClientFlagFixedNewstyle != 0
	h.noZeroes = f&ClientFlagNoZeroes != 0
	return nil
}

// ErrOptionMagic: an option header without IHAVEOPT.
var ErrOptionMagic = errors.New("nbd: bad option magic")

// OptionHeader decodes a 16-byte option header and bounds its data length.
func (h *ServerHandshake) OptionHeader(b []byte) (Opt, uint32, error) {
	if be.Uint64(b[0:]) != MagicOpts {
		return 0, 0, ErrOptionMagic
	}
	opt, n := Opt(be.Uint32(b[8:])), be.Uint32(b[12:])
	h.rounds++
	if h.rounds > OptionRoundsMax {
		return opt, n, fmt.Errorf("nbd: more than %d options", OptionRoundsMax)
	}
	if n > OptionDataMax {
		return opt, n, fmt.Errorf("nbd: %v carries %d bytes, more than %d", opt, n, OptionDataMax)
	}
	return opt, n, nil
}

// Option answers one option with its data. It returns the bytes to send
// (valid until the next call) and what to do after sending them.
func (h *ServerHandshake) Option(opt Opt, data []byte) ([]byte, Step) {
	h.out = h.out[:0]
	if !h.fixed && opt != OptExportName {
		// Plain newstyle has no error replies: closing is all we can do.
		h.closeReason = "client without fixed newstyle sent " + opt.String()
		return nil, StepClose
	}
	if opt == OptStartTLS {
		return h.startTLS(data)
	}
	if h.tlsMode == TLSRequire && !h.tls && opt != OptAbort {
		// FORCEDTLS: the data was read (the caller reads it whole), so
		// the stream stays in step; nothing of it is looked at.
		if opt == OptExportName {
			h.closeReason = "NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS on a server " +
				"that requires TLS"
			return nil, StepClose
		}
		h.replyErr(opt, RepErrTLSReqd, "this server requires TLS: send NBD_OPT_STARTTLS "+
			"first (use an nbds:// URI)")
		return h.out, StepContinue
	}
	switch opt {
	case OptExportName:
		return h.exportName(data)
	case OptAbort:
		h.reply(opt, RepAck, nil)
		h.closeReason = "client sent NBD_OPT_ABORT"
		return h.out, StepClose
	case OptList:
		return h.list(data), StepContinue
	case OptInfo, OptGo:
		return h.infoGo(opt, data)
	case OptStructured:
		switch {
		case len(data) != 0:
			h.replyErr(opt, RepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
		case h.extended:
			// proto-extended-headers.md: extended headers take precedence.
			h.replyErr(opt, RepErrExtHdrReqd, "extended headers already negotiated")
		case h.structured:
			h.replyErr(opt, RepErrInvalid, "structured replies already negotiated")
		default:
			h.structured = true
			h.reply(opt, RepAck, nil)
		}
		return h.out, StepContinue
	case OptExtendedHdrs:
		switch {
		case len(data) != 0:
			h.replyErr(opt, RepErrInvalid, "NBD_OPT_EXTENDED_HEADERS takes no data")
		case h.extended:
			h.replyErr(opt, RepErrInvalid, "extended headers already negotiated")
		default:
			h.extended = true
			h.reply(opt, RepAck, nil)
		}
		return h.out, StepContinue
	case OptListMeta, OptSetMeta:
		return h.meta(opt, data), StepContinue
	}
	h.replyErr(opt, RepErrUnsup, "option not supported: "+opt.String())
	return h.out, StepContinue
}

// startTLS answers NBD_OPT_STARTTLS.
func (h *ServerHandshake) startTLS(data []byte) ([]byte, Step) {
	switch {
	case h.tlsMode == TLSOff:
		h.replyErr(OptStartTLS, RepErrPolicy, "TLS is off on this server (start it with "+
			"-tls on or -tls require)")
	case len(data) != 0:
		h.replyErr(OptStartTLS, RepErrInvalid, "NBD_OPT_STARTTLS takes no data")
	case h.tls:
		h.replyErr(OptStartTLS, RepErrInvalid, "TLS is already running")
	default:
		// proto.md: no negotiation state survives STARTTLS; what was
		// agreed in plaintext could have been forged (CVE-2021-3716).
		h.structured, h.extended = false, false
		h.metaExport, h.metaBase = "", false
		h.Result = Negotiated{}
		h.tls = true
		h.reply(OptStartTLS, RepAck, nil)
		return h.out, StepStartTLS
	}
	return h.out, StepContinue
}

func (h *ServerHandshake) lookup(name []byte) int {
	for i := range h.exports {
		if h.exports[i].Name == string(name) {
			return i
		}
	}
	return -1
}

// hidden: export i needs TLS and this connection has none yet.
func (h *ServerHandshake) hidden(i int) bool {
	return h.exports[i].TLSOnly && !h.tls
}

// Deny keeps export i from this client (the server's access rules for
// that export exclude the client's address): it is not listed, INFO and
// GO get NBD_REP_ERR_POLICY, EXPORT_NAME closes. Call it before the first
// option.
func (h *ServerHandshake) Deny(i int) {
	if h.denied == nil {
		h.denied = make([]bool, len(h.exports))
	}
	h.denied[i] = true
}

func (h *ServerHandshake) isDenied(i int) bool { return h.denied != nil && h.denied[i] }

func (h *ServerHandshake) exportName(data []byte) ([]byte, Step) {
	if h.extended {
		h.closeReason = "NBD_OPT_EXPORT_NAME after NBD_OPT_EXTENDED_HEADERS"
		return nil, StepClose
	}
	i := h.lookup(data)
	if len(data) > StringMax || i < 0 {
		// NBD_OPT_EXPORT_NAME has no error reply; proto.md: close.
		h.closeReason = fmt.Sprintf("NBD_OPT_EXPORT_NAME for unknown export %q", data)
		return nil, StepClose
	}
	if h.isDenied(i) {
		h.closeReason = fmt.Sprintf("NBD_OPT_EXPORT_NAME for export %q, which its allow "+
			"rules keep from this client", data)
		return nil, StepClose
	}
	if h.hidden(i) {
		h.closeReason = fmt.Sprintf("NBD_OPT_EXPORT_NAME for export %q, which requires "+
			"TLS, without NBD_OPT_STARTTLS", data)
		return nil, StepClose
	}
	e := &h.exports[i]
	var b [10 + ExportNameZeroes]byte
	flags := h.txFlags(e)
	be.PutUint64(b[0:], e.Size)
	be.PutUint16(b[8:], uint16(flags))
	n := len(b)
	if h.noZeroes {
		n = 10
	}
	h.out = append(h.out, b[:n]...)
	// Without NBD_OPT_GO the client never saw block sizes: not strict.
	h.Result = Negotiated{Export: i, Structured: h.structured, Flags: flags}
	return h.out, StepServe
}

func (h *ServerHandshake) list(data []byte) []byte {
	if len(data) != 0 {
		h.replyErr(OptList, RepErrInvalid, "NBD_OPT_LIST takes no data")
		return h.out
	}
	for i := range h.exports {
		if h.hidden(i) || h.isDenied(i) {
			continue // proto.md SELECTIVETLS: MAY omit TLS-only exports
		}
		e := &h.exports[i]
		p := make([]byte, 4, 4+len(e.Name)+len(e.Description))
		be.PutUint32(p, uint32(len(e.Name)))
		p = append(p, e.Name...)
		p = append(p, e.Description...)
		h.reply(OptList, RepServer, p)
	}
	h.reply(OptList, RepAck, nil)
	return h.out
}

// infoGo parses: name length (4), name, info count (2), info items (2 each).
func (h *ServerHandshake) infoGo(opt Opt, data []byte) ([]byte, Step) {
	if len(data) < 6 {
		h.replyErr(opt, RepErrInvalid, "option data too short")
		return h.out, StepContinue
	}
	nameLen := be.Uint32(data)
	if nameLen > StringMax || uint64(nameLen)+6 > uint64(len(data)) {
		h.replyErr(opt, RepErrInvalid, "export name length out of bounds")
		return h.out, StepContinue
	}
	name := data[4 : 4+nameLen]
	rest := data[4+nameLen:]
	count := int(be.Uint16(rest))
	if count > infoRequestsMax || len(rest) != 2+2*count {
		h.replyErr(opt, RepErrInvalid, "info request count does not match option length")
		return h.out, StepContinue
	}
	if bytesIndexNUL(name) {
		h.replyErr(opt, RepErrInvalid, "export name contains a NUL byte")
		return h.out, StepContinue
	}
	i := h.lookup(name)
	if i < 0 {
		h.replyErr(opt, RepErrUnknown, fmt.Sprintf("unknown export %q", name))
		return h.out, StepContinue
	}
	if h.isDenied(i) {
		h.replyErr(opt, RepErrPolicy, fmt.Sprintf("export %q is not served to this "+
			"client's address (its allow rules)", name))
		return h.out, StepContinue
	}
	if h.hidden(i) && h.tlsMode == TLSOff {
		// Never served: without TLS on the server it cannot be reached.
		h.replyErr(opt, RepErrUnknown, fmt.Sprintf("unknown export %q", name))
		return h.out, StepContinue
	}
	if h.hidden(i) {
		h.replyErr(opt, RepErrTLSReqd, fmt.Sprintf("export %q requires TLS: send "+
			"NBD_OPT_STARTTLS first (use an nbds:// URI)", name))
		return h.out, StepContinue
	}
	var wantName, wantDesc, wantBlock bool
	for k := 0; k < count; k++ {
		switch Info(be.Uint16(rest[2+2*k:])) {
		case InfoName:
			wantName = true
		case InfoDescription:
			wantDesc = true
		case InfoBlockSize:
			wantBlock = true
		}
	}
	e := &h.exports[i]
	flags := h.txFlags(e)
	var p [18]byte
	be.PutUint16(p[0:], uint16(InfoExport))
	be.PutUint64(p[2:], e.Size)
	be.PutUint16(p[10:], uint16(flags))
	h.reply(opt, RepInfo, p[:12])
	if wantName {
		h.reply(opt, RepInfo, append([]byte{0, byte(InfoName)}, e.Name...))
	}
	if wantDesc && e.Description != "" {
		h.reply(opt, RepInfo, append([]byte{0, byte(InfoDescription)}, e.Description...))
	}
	// Block sizes are sent even when not asked for (proto.md allows it) so
	// that clients learn the preferred size; only a client that asked is
	// held to them.
	be.PutUint16(p[0:], uint16(InfoBlockSize))
	be.PutUint32(p[2:], e.BlockMin)
	be.PutUint32(p[6:], e.BlockPreferred)
	be.PutUint32(p[10:], e.BlockMax)
	h.reply(opt, RepInfo, p[:14])
	h.reply(opt, RepAck, nil)
	if opt == OptInfo {
		return h.out, StepContinue
	}
	h.Result = Negotiated{Export: i, Structured: h.structured || h.extended,
		BlockSizeAsked: wantBlock, Extended: h.extended, Flags: flags,
		BaseAllocation: h.metaBase && h.metaExport == string(name)}
	return h.out, StepServe
}

// txFlags are an export's flags as this client sees them: DF only means
// something with structured replies.
func (h *ServerHandshake) txFlags(e *Export) TxFlags {
	if h.structured || h.extended {
		return e.Flags
	}
	return e.Flags &^ TxSendDF
}

// meta answers LIST_META_CONTEXT and SET_META_CONTEXT. Data: export name
// length (4), name, query count (4), queries (length (4) + string each).
func (h *ServerHandshake) meta(opt Opt, data []byte) []byte {
	if opt == OptSetMeta {
		// proto.md: SET replaces every earlier selection, also when it fails.
		h.metaExport, h.metaBase = "", false
	}
	if !h.structured && !h.extended {
		h.replyErr(opt, RepErrInvalid, "negotiate structured replies first")
		return h.out
	}
	name, rest, ok := cutString(data)
	if !ok || len(rest) < 4 {
		h.replyErr(opt, RepErrInvalid, "malformed option data")
		return h.out
	}
	count := be.Uint32(rest)
	rest = rest[4:]
	if count > metaQueriesMax {
		h.replyErr(opt, RepErrTooBig, "too many queries")
		return h.out
	}
	match := count == 0 && opt == OptListMeta // no query lists everything
	for k := uint32(0); k < count; k++ {
		var q []byte
		if q, rest, ok = cutString(rest); !ok {
			h.replyErr(opt, RepErrInvalid, "query length beyond option data")
			return h.out
		}
		switch string(q) {
		case MetaBaseAllocation:
			match = true
		case "base:":
			match = match || opt == OptListMeta // wildcards only list
		}
	}
	if len(rest) != 0 {
		h.replyErr(opt, RepErrInvalid, "trailing bytes after the queries")
		return h.out
	}
	if bytesIndexNUL(name) {
		h.replyErr(opt, RepErrInvalid, "export name contains a NUL byte")
		return h.out
	}
	if i := h.lookup(name); i < 0 || h.hidden(i) || h.isDenied(i) {
		// A TLS-only export does not exist for this connection yet;
		// proto.md allows ERR_TLS_REQD only for INFO, GO and EXPORT_NAME.
		h.replyErr(opt, RepErrUnknown, fmt.Sprintf("unknown export %q", name))
		return h.out
	}
	id := uint32(0) // proto.md: IDs in LIST replies are reserved (zero)
	if opt == OptSetMeta {
		h.metaExport, h.metaBase, id = string(name), match, MetaIDBaseAllocation
	}
	if match {
		p := make([]byte, 4, 4+len(MetaBaseAllocation))
		be.PutUint32(p, id)
		h.reply(opt, RepMetaContext, append(p, MetaBaseAllocation...))
	}
	h.reply(opt, RepAck, nil)
	return h.out
}

// cutString splits a 4-byte length and that many bytes (at most
// StringMax) off the front of b.
func cutString(b []byte) (s, rest []byte, ok bool) {
	if len(b) < 4 {
		return nil, nil, false
	}
	n := be.Uint32(b)
	if n > StringMax || uint64(n) > uint64(len(b)-4) {
		return nil, nil, false
	}
	return b[4 : 4+n], b[4+n:], true
}

func bytesIndexNUL(b []byte) bool {
	for _, c := range b {
		if c == 0 {
			return true
		}
	}
	return false
}

func (h *ServerHandshake) reply(opt Opt, typ Rep, data []byte) {
	var hdr [OptionReplyHeadSize]byte
	be.PutUint64(hdr[0:], MagicReply)
	be.PutUint32(hdr[8:], uint32(opt))
	be.PutUint32(hdr[12:], uint32(typ))
	be.PutUint32(hdr[16:], uint32(len(data)))
	h.out = append(h.out, hdr[:]...)
	h.out = append(h.out, data...)
}

// optionMessageMax bounds option error messages: proto.md says strings
// SHOULD be at most 256 bytes (and MUST be at most 4096), messages included.
const optionMessageMax = 256

// replyErr sends an error reply; its data is a message for a human, cut to
// optionMessageMax bytes on a character boundary (a quoted 4096-byte
// export name would otherwise exceed the spec's string limit).
func (h *ServerHandshake) replyErr(opt Opt, typ Rep, msg string) {
	h.reply(opt, typ, []byte(clipMessage(msg, optionMessageMax)))
}
