package wire

import "strconv"

// Magic numbers, from doc/proto.md.
const (
	MagicInit       = 0x4e42444d41474943 // "NBDMAGIC"
	MagicOpts       = 0x49484156454F5054 // "IHAVEOPT"
	MagicReply      = 0x3e889045565a9    // NBD_REP_MAGIC, option replies
	MagicRequest    = 0x25609513         // NBD_REQUEST_MAGIC
	MagicSimple     = 0x67446698         // NBD_SIMPLE_REPLY_MAGIC
	MagicStructured = 0x668e33ef         // NBD_STRUCTURED_REPLY_MAGIC
	MagicExtRequest = 0x21e41c71         // NBD_EXTENDED_REQUEST_MAGIC
	MagicExtReply   = 0x6e8a278c         // NBD_EXTENDED_REPLY_MAGIC
)

// Handshake flags sent by the server (16 bits).
const (
	FlagFixedNewstyle = 1 << 0 // NBD_FLAG_FIXED_NEWSTYLE
	FlagNoZeroes      = 1 << 1 // NBD_FLAG_NO_ZEROES
)

// Client flags (32 bits).
const (
	ClientFlagFixedNewstyle = 1 << 0 // NBD_FLAG_C_FIXED_NEWSTYLE
	ClientFlagNoZeroes      = 1 << 1 // NBD_FLAG_C_NO_ZEROES
	clientFlagsKnown        = ClientFlagFixedNewstyle | ClientFlagNoZeroes
)

// TxFlags are the transmission flags of an export (16 bits).
type TxFlags uint16

// Transmission flags.
const (
	TxHasFlags       TxFlags = 1 << 0  // NBD_FLAG_HAS_FLAGS
	TxReadOnly       TxFlags = 1 << 1  // NBD_FLAG_READ_ONLY
	TxSendFlush      TxFlags = 1 << 2  // NBD_FLAG_SEND_FLUSH
	TxSendFUA        TxFlags = 1 << 3  // NBD_FLAG_SEND_FUA
	TxRotational     TxFlags = 1 << 4  // NBD_FLAG_ROTATIONAL
	TxSendTrim       TxFlags = 1 << 5  // NBD_FLAG_SEND_TRIM
	TxSendWriteZeros TxFlags = 1 << 6  // NBD_FLAG_SEND_WRITE_ZEROES
	TxSendDF         TxFlags = 1 << 7  // NBD_FLAG_SEND_DF
	TxCanMultiConn   TxFlags = 1 << 8  // NBD_FLAG_CAN_MULTI_CONN
	TxSendResize     TxFlags = 1 << 9  // NBD_FLAG_SEND_RESIZE
	TxSendCache      TxFlags = 1 << 10 // NBD_FLAG_SEND_CACHE
	TxSendFastZero   TxFlags = 1 << 11 // NBD_FLAG_SEND_FAST_ZERO
)

// Opt is an option request type.
type Opt uint32

// Options.
const (
	OptExportName    Opt = 1  // NBD_OPT_EXPORT_NAME
	OptAbort         Opt = 2  // NBD_OPT_ABORT
	OptList          Opt = 3  // NBD_OPT_LIST
	OptStartTLS      Opt = 5  // NBD_OPT_STARTTLS
	OptInfo          Opt = 6  // NBD_OPT_INFO
	OptGo            Opt = 7  // NBD_OPT_GO
	OptStructured    Opt = 8  // NBD_OPT_STRUCTURED_REPLY
	OptListMeta      Opt = 9  // NBD_OPT_LIST_META_CONTEXT
	OptSetMeta       Opt = 10 // NBD_OPT_SET_META_CONTEXT
	OptExtendedHdrs  Opt = 11 // NBD_OPT_EXTENDED_HEADERS
	optNamesKnownMax     = OptExtendedHdrs
)

var optNames = [...]string{
	OptExportName: "EXPORT_NAME", OptAbort: "ABORT", OptList: "LIST", 4: "PEEK_EXPORT",
	OptStartTLS: "STARTTLS", OptInfo: "INFO", OptGo: "GO", OptStructured: "STRUCTURED_REPLY",
	OptListMeta: "LIST_META_CONTEXT", OptSetMeta: "SET_META_CONTEXT",
	OptExtendedHdrs: "EXTENDED_HEADERS",
}

func (o Opt) String() string {
	if o > 0 && o <= optNamesKnownMax {
		return "NBD_OPT_" + optNames[o]
	}
	return "NBD_OPT_" + strconv.FormatUint(uint64(o), 10)
}

// Rep is an option reply type.
type Rep uint32

const repErr Rep = 1 << 31

// Option replies.
const (
	RepAck             Rep = 1           // NBD_REP_ACK
	RepServer          Rep = 2           // NBD_REP_SERVER
	RepInfo            Rep = 3           // NBD_REP_INFO
	RepMetaContext     Rep = 4           // NBD_REP_META_CONTEXT
	RepErrUnsup        Rep = repErr | 1  // NBD_REP_ERR_UNSUP
	RepErrPolicy       Rep = repErr | 2  // NBD_REP_ERR_POLICY
	RepErrInvalid      Rep = repErr | 3  // NBD_REP_ERR_INVALID
	RepErrPlatform     Rep = repErr | 4  // NBD_REP_ERR_PLATFORM
	RepErrTLSReqd      Rep = repErr | 5  // NBD_REP_ERR_TLS_REQD
	RepErrUnknown      Rep = repErr | 6  // NBD_REP_ERR_UNKNOWN
	RepErrShutdown     Rep = repErr | 7  // NBD_REP_ERR_SHUTDOWN
	RepErrBlockSizeReq Rep = repErr | 8  // NBD_REP_ERR_BLOCK_SIZE_REQD
	RepErrTooBig       Rep = repErr | 9  // NBD_REP_ERR_TOO_BIG
	RepErrExtHdrReqd   Rep = repErr | 10 // NBD_REP_ERR_EXT_HEADER_REQD
)

// IsErr reports whether r is an error reply.
func (r Rep) IsErr() bool { return r&repErr != 0 }

var repNames = map[Rep]string{
	RepAck: "ACK", RepServer: "SERVER", RepInfo: "INFO", RepMetaContext: "META_CONTEXT",
	RepErrUnsup: "ERR_UNSUP", RepErrPolicy: "ERR_POLICY", RepErrInvalid: "ERR_INVALID",
	RepErrPlatform: "ERR_PLATFORM", RepErrTLSReqd: "ERR_TLS_REQD",
	RepErrUnknown: "ERR_UNKNOWN", RepErrShutdown: "ERR_SHUTDOWN",
	RepErrBlockSizeReq: "ERR_BLOCK_SIZE_REQD", RepErrTooBig: "ERR_TOO_BIG",
	RepErrExtHdrReqd: "ERR_EXT_HEADER_REQD",
}

func (r Rep) String() string {
	if n, ok := repNames[r]; ok {
		return "NBD_REP_" + n
	}
	return "NBD_REP_" + strconv.FormatUint(uint64(r), 16)
}

// Info is an NBD_INFO_* item type.
type Info uint16

// Information items of NBD_OPT_INFO and NBD_OPT_GO.
const (
	InfoExport      Info = 0 // NBD_INFO_EXPORT
	InfoName        Info = 1 // NBD_INFO_NAME
	InfoDescription Info = 2 // NBD_INFO_DESCRIPTION
	InfoBlockSize   Info = 3 // NBD_INFO_BLOCK_SIZE
)

func (i Info) String() string {
	switch i {
	case InfoExport:
		return "NBD_INFO_EXPORT"
	case InfoName:
		return "NBD_INFO_NAME"
	case InfoDescription:
		return "NBD_INFO_DESCRIPTION"
	case InfoBlockSize:
		return "NBD_INFO_BLOCK_SIZE"
	}
	return "NBD_INFO_" + strconv.FormatUint(uint64(i), 10)
}

// Cmd is a transmission-phase request type.
type Cmd uint16

// Commands.
const (
	CmdRead        Cmd = 0 // NBD_CMD_READ
	CmdWrite       Cmd = 1 // NBD_CMD_WRITE
	CmdDisc        Cmd = 2 // NBD_CMD_DISC
	CmdFlush       Cmd = 3 // NBD_CMD_FLUSH
	CmdTrim        Cmd = 4 // NBD_CMD_TRIM
	CmdCache       Cmd = 5 // NBD_CMD_CACHE
	CmdWriteZeroes Cmd = 6 // NBD_CMD_WRITE_ZEROES
	CmdBlockStatus Cmd = 7 // NBD_CMD_BLOCK_STATUS
	CmdResize      Cmd = 8 // NBD_CMD_RESIZE
	// CmdCount bounds per-command tables (counters); Cmd values at or past
	// it are unknown commands.
	CmdCount = 9
)

var cmdNames = [CmdCount]string{
	"READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS", "RESIZE",
}

func (c Cmd) String() string {
	if c < CmdCount {
		return "NBD_CMD_" + cmdNames[c]
	}
	return "NBD_CMD_" + strconv.FormatUint(uint64(c), 10)
}

// CmdFlags are the flags of a request (16 bits).
type CmdFlags uint16

// Command flags.
const (
	CmdFlagFUA        CmdFlags = 1 << 0 // NBD_CMD_FLAG_FUA
	CmdFlagNoHole     CmdFlags = 1 << 1 // NBD_CMD_FLAG_NO_HOLE
	CmdFlagDF         CmdFlags = 1 << 2 // NBD_CMD_FLAG_DF
	CmdFlagReqOne     CmdFlags = 1 << 3 // NBD_CMD_FLAG_REQ_ONE
	CmdFlagFastZero   CmdFlags = 1 << 4 // NBD_CMD_FLAG_FAST_ZERO
	CmdFlagPayloadLen CmdFlags = 1 << 5 // NBD_CMD_FLAG_PAYLOAD_LEN
)

// ReplyType is a structured reply chunk type.
type ReplyType uint16

// Structured reply chunk types.
const (
	ReplyNone           ReplyType = 0         // NBD_REPLY_TYPE_NONE
	ReplyOffsetData     ReplyType = 1         // NBD_REPLY_TYPE_OFFSET_DATA
	ReplyOffsetHole     ReplyType = 2         // NBD_REPLY_TYPE_OFFSET_HOLE
	ReplyBlockStatus    ReplyType = 5         // NBD_REPLY_TYPE_BLOCK_STATUS
	ReplyBlockStatusExt ReplyType = 6         // NBD_REPLY_TYPE_BLOCK_STATUS_EXT
	ReplyError          ReplyType = 1<<15 | 1 // NBD_REPLY_TYPE_ERROR
	ReplyErrorOffset    ReplyType = 1<<15 | 2 // NBD_REPLY_TYPE_ERROR_OFFSET
	replyTypeErrBit     ReplyType = 1 << 15   // error chunk types have it
)

// ReplyFlagDone marks the last chunk of a structured reply.
const ReplyFlagDone uint16 = 1 << 0 // NBD_REPLY_FLAG_DONE

// IsErr reports whether t is an error chunk type.
func (t ReplyType) IsErr() bool { return t&replyTypeErrBit != 0 }

func (t ReplyType) String() string {
	switch t {
	case ReplyNone:
		return "NBD_REPLY_TYPE_NONE"
	case ReplyOffsetData:
		return "NBD_REPLY_TYPE_OFFSET_DATA"
	case ReplyOffsetHole:
		return "NBD_REPLY_TYPE_OFFSET_HOLE"
	case ReplyBlockStatus:
		return "NBD_REPLY_TYPE_BLOCK_STATUS"
	case ReplyBlockStatusExt:
		return "NBD_REPLY_TYPE_BLOCK_STATUS_EXT"
	case ReplyError:
		return "NBD_REPLY_TYPE_ERROR"
	case ReplyErrorOffset:
		return "NBD_REPLY_TYPE_ERROR_OFFSET"
	}
	return "NBD_REPLY_TYPE_" + strconv.FormatUint(uint64(t), 10)
}

// Extent status flags of the base:allocation context.
const (
	StateHole uint32 = 1 << 0 // NBD_STATE_HOLE
	StateZero uint32 = 1 << 1 // NBD_STATE_ZERO
)

// MetaBaseAllocation is the one metadata context served.
const MetaBaseAllocation = "base:allocation"

// Sizes of fixed messages, in bytes.
const (
	GreetingSize        = 18 // NBDMAGIC + IHAVEOPT + 16-bit flags
	OptionHeaderSize    = 16 // IHAVEOPT + option + length
	OptionReplyHeadSize = 20 // REP magic + option + type + length
	RequestSize         = 28 // compact request header
	ExtRequestSize      = 32 // extended request header
	ExtReplySize        = 32 // extended reply chunk header
	SimpleReplySize     = 16
	ChunkHeaderSize     = 20  // structured reply chunk header
	ExportNameZeroes    = 124 // padding after NBD_OPT_EXPORT_NAME without NO_ZEROES
)

// Protocol bounds that the spec fixes or recommends.
const (
	// StringMax is the longest string (export name, description) this side
	// accepts or sends; proto.md: strings SHOULD NOT exceed 4096 bytes.
	StringMax = 4096
	// PayloadMax is the largest READ or WRITE data length served: the
	// spec's 32 MiB recommendation, which every client honours.
	PayloadMax = 32 << 20
)
