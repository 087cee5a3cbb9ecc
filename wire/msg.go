package wire

import (
	"encoding/binary"
	"errors"
	"strconv"
	"syscall"
)

var be = binary.BigEndian

// Request is a decoded transmission-phase request header, compact or
// extended. Length is the payload length of a WRITE (or of any request
// with CmdFlagPayloadLen), else the effect length: 64 bits with extended
// headers, at most 32 in the compact form.
type Request struct {
	Flags  CmdFlags
	Type   Cmd
	Cookie uint64
	Offset uint64
	Length uint64
}

// ErrRequestMagic means a request header did not start with
// NBD_REQUEST_MAGIC: the stream is out of sync and the only safe answer is
// a hard disconnect.
var ErrRequestMagic = errors.New("nbd: bad request magic")

// DecodeRequest decodes a compact request header from b[:RequestSize].
func DecodeRequest(b []byte, r *Request) error {
	_ = b[RequestSize-1]
	if be.Uint32(b[0:]) != MagicRequest {
		return ErrRequestMagic
	}
	r.Flags = CmdFlags(be.Uint16(b[4:]))
	r.Type = Cmd(be.Uint16(b[6:]))
	r.Cookie = be.Uint64(b[8:])
	r.Offset = be.Uint64(b[16:])
	r.Length = uint64(be.Uint32(b[24:]))
	return nil
}

// DecodeExtendedRequest decodes an extended request header from
// b[:ExtRequestSize] (NBD_OPT_EXTENDED_HEADERS).
func DecodeExtendedRequest(b []byte, r *Request) error {
	_ = b[ExtRequestSize-1]
	if be.Uint32(b[0:]) != MagicExtRequest {
		return ErrRequestMagic
	}
	r.Flags = CmdFlags(be.Uint16(b[4:]))
	r.Type = Cmd(be.Uint16(b[6:]))
	r.Cookie = be.Uint64(b[8:])
	r.Offset = be.Uint64(b[16:])
	r.Length = be.Uint64(b[24:])
	return nil
}

// EncodeExtendedRequest writes an extended request header into
// b[:ExtRequestSize].
func EncodeExtendedRequest(b []byte, r *Request) {
	_ = b[ExtRequestSize-1]
	be.PutUint32(b[0:], MagicExtRequest)
	be.PutUint16(b[4:], uint16(r.Flags))
	be.PutUint16(b[6:], uint16(r.Type))
	be.PutUint64(b[8:], r.Cookie)
	be.PutUint64(b[16:], r.Offset)
	be.PutUint64(b[24:], r.Length)
}

// EncodeRequest writes a compact request header into b[:RequestSize].
func EncodeRequest(b []byte, r *Request) {
	_ = b[RequestSize-1]
	be.PutUint32(b[0:], MagicRequest)
	be.PutUint16(b[4:], uint16(r.Flags))
	be.PutUint16(b[6:], uint16(r.Type))
	be.PutUint64(b[8:], r.Cookie)
	be.PutUint64(b[16:], r.Offset)
	be.PutUint32(b[24:], uint32(r.Length))
}

// EncodeSimpleReply writes a simple reply header into b[:SimpleReplySize].
func EncodeSimpleReply(b []byte, cookie uint64, errno Errno) {
	_ = b[SimpleReplySize-1]
	be.PutUint32(b[0:], MagicSimple)
	be.PutUint32(b[4:], uint32(errno))
	be.PutUint64(b[8:], cookie)
}

// EncodeChunkHeader writes a structured reply chunk header into
// b[:ChunkHeaderSize]; length is the payload length that follows.
func EncodeChunkHeader(b []byte, flags uint16, typ ReplyType, cookie uint64, length uint32) {
	_ = b[ChunkHeaderSize-1]
	be.PutUint32(b[0:], MagicStructured)
	be.PutUint16(b[4:], flags)
	be.PutUint16(b[6:], uint16(typ))
	be.PutUint64(b[8:], cookie)
	be.PutUint32(b[16:], length)
}

// Errno is an error value carried in NBD replies.
type Errno uint32

// NBD error values (proto.md "Error values"); they share Linux's numbers.
const (
	EOK       Errno = 0
	EPERM     Errno = 1   // NBD_EPERM
	EIO       Errno = 5   // NBD_EIO
	ENOMEM    Errno = 12  // NBD_ENOMEM
	EINVAL    Errno = 22  // NBD_EINVAL
	ENOSPC    Errno = 28  // NBD_ENOSPC
	EOVERFLOW Errno = 75  // NBD_EOVERFLOW
	ENOTSUP   Errno = 95  // NBD_ENOTSUP
	ESHUTDOWN Errno = 108 // NBD_ESHUTDOWN
)

func (e Errno) String() string {
	switch e {
	case EOK:
		return "OK"
	case EPERM:
		return "EPERM"
	case EIO:
		return "EIO"
	case ENOMEM:
		return "ENOMEM"
	case EINVAL:
		return "EINVAL"
	case ENOSPC:
		return "ENOSPC"
	case EOVERFLOW:
		return "EOVERFLOW"
	case ENOTSUP:
		return "ENOTSUP"
	case ESHUTDOWN:
		return "ESHUTDOWN"
	}
	return "NBD_E" + strconv.FormatUint(uint64(e), 10) // not a protocol value
}

// ErrnoFromSys maps a Linux errno (a negative io_uring result's absolute
// value) to the NBD error sent to the client. It is the one mapping. Errors
// the protocol has no name for become EIO: for a storage client an unnamed
// device failure is an I/O error, never "invalid argument".
func ErrnoFromSys(e syscall.Errno) Errno {
	switch e {
	case 0:
		return EOK
	case syscall.EPERM, syscall.EACCES, syscall.EROFS:
		return EPERM
	case syscall.ENOMEM:
		return ENOMEM
	case syscall.EINVAL:
		return EINVAL
	case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
		return ENOSPC
	case syscall.EOVERFLOW:
		return EOVERFLOW
	case syscall.EOPNOTSUPP:
		return ENOTSUP
	case syscall.ESHUTDOWN:
		return ESHUTDOWN
	}
	return EIO
}
