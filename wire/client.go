package wire

import (
	"errors"
	"fmt"
	"io"
)

// ClientOptions choose what the client side of the handshake negotiates.
type ClientOptions struct {
	Name       string // export name ("" is the default export)
	Structured bool   // negotiate NBD_OPT_STRUCTURED_REPLY
	// BlockSize asks for NBD_INFO_BLOCK_SIZE, promising aligned requests.
	BlockSize bool
	// ExportName uses NBD_OPT_EXPORT_NAME instead of NBD_OPT_GO.
	ExportName bool
	// Extended negotiates NBD_OPT_EXTENDED_HEADERS (32-byte headers).
	Extended bool
	// BaseAllocation selects the base:allocation context (needs
	// Structured or Extended).
	BaseAllocation bool
	// TLS, when set, makes NBD_OPT_STARTTLS the first option (an nbds://
	// URI: any refusal fails the handshake) and is then called with the
	// connection to run the TLS client handshake over it; the rest of
	// the handshake, and the caller's transmission phase, use what it
	// returns.
	TLS func(io.ReadWriter) (io.ReadWriter, error)
}

// ErrTLSRefused: the server answered NBD_OPT_STARTTLS with an error.
var ErrTLSRefused = errors.New("nbd: server refused NBD_OPT_STARTTLS")

// ClientExport is what the server told the client about the export.
type ClientExport struct {
	Size           uint64
	Flags          TxFlags
	BlockMin       uint32
	BlockPreferred uint32
	BlockMax       uint32
	Structured     bool
	Extended       bool
	MetaID         uint32 // base:allocation's context ID, 0 when not selected
}

// Style is the reply style the client negotiated.
func (ex *ClientExport) Style() ReplyStyle {
	switch {
	case ex.Extended:
		return StyleExtended
	case ex.Structured:
		return StyleStructured
	}
	return StyleSimple
}

// OptionError is a server's error reply to an option.
type OptionError struct {
	Opt     Opt
	Rep     Rep
	Message string
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("nbd: server answered %v with %v: %s", e.Opt, e.Rep, e.Message)
}

// ClientHandshake runs the client side of a fixed-newstyle handshake over
// rw and returns the negotiated export. rw is left at the start of the
// transmission phase.
func ClientHandshake(rw io.ReadWriter, o ClientOptions) (ClientExport, error) {
	var ex ClientExport
	if err := clientGreeting(rw); err != nil {
		return ex, err
	}
	if o.TLS != nil {
		rep, p, err := clientOption(rw, OptStartTLS, nil)
		if err != nil {
			return ex, err
		}
		if rep != RepAck {
			return ex, fmt.Errorf("%w: %v: %s", ErrTLSRefused, rep, p)
		}
		if rw, err = o.TLS(rw); err != nil {
			return ex, fmt.Errorf("nbd: TLS handshake: %w", err)
		}
	}
	if o.Structured {
		rep, _, err := clientOption(rw, OptStructured, nil)
		if err != nil {
			return ex, err
		}
		ex.Structured = rep == RepAck
	}
	if o.Extended {
		rep, _, err := clientOption(rw, OptExtendedHdrs, nil)
		if err != nil {
			return ex, err
		}
		ex.Extended = rep == RepAck
	}
	if o.BaseAllocation {
		if err := clientSetMeta(rw, o.Name, &ex); err != nil {
			return ex, err
		}
	}
	if o.ExportName {
		if err := clientSend(rw, OptExportName, []byte(o.Name)); err != nil {
			return ex, err
		}
		var b [10]byte
		if _, err := io.ReadFull(rw, b[:]); err != nil {
			return ex, fmt.Errorf("nbd: read NBD_OPT_EXPORT_NAME reply: %w", err)
		}
		ex.Size, ex.Flags = be.Uint64(b[0:]), TxFlags(be.Uint16(b[8:]))
		return ex, nil
	}
	data := make([]byte, 4, 4+len(o.Name)+6)
	be.PutUint32(data, uint32(len(o.Name)))
	data = append(data, o.Name...)
	if o.BlockSize {
		data = append(data, 0, 1, 0, byte(InfoBlockSize))
	} else {
		data = append(data, 0, 0)
	}
	if err := clientSend(rw, OptGo, data); err != nil {
		return ex, err
	}
	for {
		rep, p, err := clientReply(rw, OptGo)
		if err != nil {
			return ex, err
		}
		switch {
		case rep == RepAck:
			return ex, nil
		case rep.IsErr():
			return ex, &OptionError{Opt: OptGo, Rep: rep, Message: string(p)}
		case rep == RepInfo && len(p) >= 2:
			clientInfo(&ex, p)
		}
	}
}

func clientSetMeta(rw io.ReadWriter, name string, ex *ClientExport) error {
	data := make([]byte, 0, 12+len(name)+len(MetaBaseAllocation))
	data = be.AppendUint32(data, uint32(len(name)))
	data = append(data, name...)
	data = be.AppendUint32(data, 1)
	data = be.AppendUint32(data, uint32(len(MetaBaseAllocation)))
	data = append(data, MetaBaseAllocation...)
	if err := clientSend(rw, OptSetMeta, data); err != nil {
		return err
	}
	for {
		rep, p, err := clientReply(rw, OptSetMeta)
		if err != nil {
			return err
		}
		switch {
		case rep == RepAck:
			return nil
		case rep.IsErr():
			return &OptionError{Opt: OptSetMeta, Rep: rep, Message: string(p)}
		case rep == RepMetaContext && len(p) >= 4 && string(p[4:]) == MetaBaseAllocation:
			ex.MetaID = be.Uint32(p)
		}
	}
}

func clientInfo(ex *ClientExport, p []byte) {
	switch Info(be.Uint16(p)) {
	case InfoExport:
		if len(p) >= 12 {
			ex.Size, ex.Flags = be.Uint64(p[2:]), TxFlags(be.Uint16(p[10:]))
		}
	case InfoBlockSize:
		if len(p) >= 14 {
			ex.BlockMin, ex.BlockPreferred = be.Uint32(p[2:]), be.Uint32(p[6:])
			ex.BlockMax = be.Uint32(p[10:])
		}
	}
}

func clientGreeting(rw io.ReadWriter) error {
	var g [GreetingSize]byte
	if _, err := io.ReadFull(rw, g[:]); err != nil {
		return fmt.Errorf("nbd: read greeting: %w", err)
	}
	if be.Uint64(g[0:]) != MagicInit || be.Uint64(g[8:]) != MagicOpts {
		return errors.New("nbd: server is not a fixed-newstyle NBD server")
	}
	flags := be.Uint16(g[16:])
	if flags&FlagFixedNewstyle == 0 {
		return errors.New("nbd: server does not speak fixed newstyle")
	}
	var cf [4]byte
	be.PutUint32(cf[:], uint32(ClientFlagFixedNewstyle|(uint32(flags)&FlagNoZeroes)))
	if flags&FlagNoZeroes == 0 {
		return errors.New("nbd: server without NBD_FLAG_NO_ZEROES is not supported")
	}
	_, err := rw.Write(cf[:])
	return err
}

func clientSend(w io.Writer, opt Opt, data []byte) error {
	b := make([]byte, OptionHeaderSize+len(data))
	be.PutUint64(b[0:], MagicOpts)
	be.PutUint32(b[8:], uint32(opt))
	be.PutUint32(b[12:], uint32(len(data)))
	copy(b[OptionHeaderSize:], data)
	_, err := w.Write(b)
	return err
}

// clientReply reads one option reply to opt, bounding its data.
func clientReply(r io.Reader, opt Opt) (Rep, []byte, error) {
	var h [OptionReplyHeadSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, fmt.Errorf("nbd: read reply to %v: %w", opt, err)
	}
	if be.Uint64(h[0:]) != MagicReply || Opt(be.Uint32(h[8:])) != opt {
		return 0, nil, fmt.Errorf("nbd: malformed reply to %v", opt)
	}
	n := be.Uint32(h[16:])
	if n > OptionDataMax {
		return 0, nil, fmt.Errorf("nbd: reply to %v of %d bytes is too long", opt, n)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, fmt.Errorf("nbd: read reply to %v: %w", opt, err)
	}
	return Rep(be.Uint32(h[12:])), p, nil
}

func clientOption(rw io.ReadWriter, opt Opt, data []byte) (Rep, []byte, error) {
	if err := clientSend(rw, opt, data); err != nil {
		return 0, nil, err
	}
	return clientReply(rw, opt)
}

// ClientList asks for the export list (NBD_OPT_LIST) and then aborts.
func ClientList(rw io.ReadWriter) ([]string, error) {
	if err := clientGreeting(rw); err != nil {
		return nil, err
	}
	if err := clientSend(rw, OptList, nil); err != nil {
		return nil, err
	}
	var names []string
	for {
		rep, p, err := clientReply(rw, OptList)
		if err != nil {
			return nil, err
		}
		if rep.IsErr() {
			return nil, &OptionError{Opt: OptList, Rep: rep, Message: string(p)}
		}
		if rep == RepAck {
			break
		}
		if len(p) >= 4 && uint64(be.Uint32(p))+4 <= uint64(len(p)) {
			names = append(names, string(p[4:4+be.Uint32(p)]))
		}
	}
	_, _, _ = clientOption(rw, OptAbort, nil)
	return names, nil
}

// Reply is a decoded reply header: simple, or one structured or extended
// chunk.
type Reply struct {
	Structured bool // a chunk (structured or extended), not a simple reply
	Flags      uint16
	Type       ReplyType
	Cookie     uint64
	Offset     uint64 // extended chunks echo the request's offset
	Errno      Errno
	Length     uint64 // chunks: payload length that follows the header
}

// ErrReplyMagic: a reply with neither magic; the stream is lost.
var ErrReplyMagic = errors.New("nbd: bad reply magic")

// ReadReplyHeader reads a simple reply or a structured or extended chunk
// header from r into rep, using buf (at least ExtReplySize bytes) as
// scratch.
func ReadReplyHeader(r io.Reader, buf []byte, rep *Reply) error {
	if _, err := io.ReadFull(r, buf[:SimpleReplySize]); err != nil {
		return err
	}
	switch be.Uint32(buf) {
	case MagicSimple:
		*rep = Reply{Errno: Errno(be.Uint32(buf[4:])), Cookie: be.Uint64(buf[8:])}
		return nil
	case MagicStructured:
		if _, err := io.ReadFull(r, buf[SimpleReplySize:ChunkHeaderSize]); err != nil {
			return err
		}
		*rep = Reply{Structured: true, Flags: be.Uint16(buf[4:]),
			Type: ReplyType(be.Uint16(buf[6:])), Cookie: be.Uint64(buf[8:]),
			Length: uint64(be.Uint32(buf[16:]))}
		return nil
	case MagicExtReply:
		if _, err := io.ReadFull(r, buf[SimpleReplySize:ExtReplySize]); err != nil {
			return err
		}
		*rep = Reply{Structured: true, Flags: be.Uint16(buf[4:]),
			Type: ReplyType(be.Uint16(buf[6:])), Cookie: be.Uint64(buf[8:]),
			Offset: be.Uint64(buf[16:]), Length: be.Uint64(buf[24:])}
		return nil
	}
	return ErrReplyMagic
}
