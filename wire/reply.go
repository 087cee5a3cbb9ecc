package wire

import "unicode/utf8"

// ReplyStyle is what the handshake agreed replies look like.
type ReplyStyle uint8

const (
	StyleSimple     ReplyStyle = iota // simple replies only
	StyleStructured                   // NBD_OPT_STRUCTURED_REPLY: 20-byte chunks
	StyleExtended                     // NBD_OPT_EXTENDED_HEADERS: 32-byte chunks
)

// Reply header bounds: the largest header EncodeError, EncodeRead or
// EncodeBlockStatus writes (an extended error chunk with its message).
const (
	ErrorMessageMax = 64
	ReplyHeaderMax  = ExtReplySize + 6 + ErrorMessageMax
)

// EncodeChunk writes a structured (20-byte) or extended (32-byte) chunk
// header and returns its size. offset is the request's offset, which only
// the extended header carries.
func EncodeChunk(b []byte, st ReplyStyle, flags uint16, typ ReplyType, cookie, offset,
	payloadLen uint64) int {
	if st != StyleExtended {
		EncodeChunkHeader(b, flags, typ, cookie, uint32(payloadLen))
		return ChunkHeaderSize
	}
	_ = b[ExtReplySize-1]
	be.PutUint32(b[0:], MagicExtReply)
	be.PutUint16(b[4:], flags)
	be.PutUint16(b[6:], uint16(typ))
	be.PutUint64(b[8:], cookie)
	be.PutUint64(b[16:], offset)
	be.PutUint64(b[24:], payloadLen)
	return ExtReplySize
}

// EncodeDone writes a successful reply without payload: a simple reply
// where one is allowed, else a final NONE chunk. It returns the length.
func EncodeDone(b []byte, st ReplyStyle, cookie, offset uint64) int {
	if st != StyleExtended {
		EncodeSimpleReply(b, cookie, EOK)
		return SimpleReplySize
	}
	return EncodeChunk(b, st, ReplyFlagDone, ReplyNone, cookie, offset, 0)
}

// EncodeError writes a final error reply: a simple reply in the simple
// style, else an ERROR chunk carrying msg (cut to ErrorMessageMax bytes)
// for a human. It returns the length.
func EncodeError(b []byte, st ReplyStyle, cookie, offset uint64, errno Errno,
	msg string) int {
	if st == StyleSimple {
		EncodeSimpleReply(b, cookie, errno)
		return SimpleReplySize
	}
	msg = clipMessage(msg, ErrorMessageMax)
	n := EncodeChunk(b, st, ReplyFlagDone, ReplyError, cookie, offset, uint64(6+len(msg)))
	be.PutUint32(b[n:], uint32(errno))
	be.PutUint16(b[n+4:], uint16(len(msg)))
	copy(b[n+6:], msg)
	return n + 6 + len(msg)
}

// EncodeRead writes the header that precedes dataLen bytes read at
// dataOffset: a simple reply, or an OFFSET_DATA chunk (final when done).
// It returns the header length; the data follows.
func EncodeRead(b []byte, st ReplyStyle, cookie, offset, dataOffset uint64, dataLen uint32,
	done bool) int {
	if st == StyleSimple {
		EncodeSimpleReply(b, cookie, EOK)
		return SimpleReplySize
	}
	n := EncodeChunk(b, st, doneFlag(done), ReplyOffsetData, cookie, offset,
		8+uint64(dataLen))
	be.PutUint64(b[n:], dataOffset)
	return n + 8
}

// EncodeHole writes an OFFSET_HOLE chunk: holeLen bytes of zeros at
// holeOffset that are not sent. It returns its length.
func EncodeHole(b []byte, st ReplyStyle, cookie, offset, holeOffset uint64, holeLen uint32,
	done bool) int {
	n := EncodeChunk(b, st, doneFlag(done), ReplyOffsetHole, cookie, offset, 12)
	be.PutUint64(b[n:], holeOffset)
	be.PutUint32(b[n+8:], holeLen)
	return n + 12
}

// ExtentSize is the size of one block status descriptor in style st.
func ExtentSize(st ReplyStyle) int {
	if st == StyleExtended {
		return 16
	}
	return 8
}

// EncodeBlockStatus writes the header of a final block status chunk with
// count descriptors for contextID; the descriptors (PutExtent) follow.
func EncodeBlockStatus(b []byte, st ReplyStyle, cookie, offset uint64, contextID uint32,
	count int) int {
	if st != StyleExtended {
		n := EncodeChunk(b, st, ReplyFlagDone, ReplyBlockStatus, cookie, offset,
			4+uint64(count*8))
		be.PutUint32(b[n:], contextID)
		return n + 4
	}
	n := EncodeChunk(b, st, ReplyFlagDone, ReplyBlockStatusExt, cookie, offset,
		8+uint64(count*16))
	be.PutUint32(b[n:], contextID)
	be.PutUint32(b[n+4:], uint32(count))
	return n + 8
}

// PutExtent writes one descriptor in style st and returns its size.
func PutExtent(b []byte, st ReplyStyle, length uint64, flags uint32) int {
	if st == StyleExtended {
		be.PutUint64(b[0:], length)
		be.PutUint64(b[8:], uint64(flags))
		return 16
	}
	be.PutUint32(b[0:], uint32(length))
	be.PutUint32(b[4:], flags)
	return 8
}

func doneFlag(done bool) uint16 {
	if done {
		return ReplyFlagDone
	}
	return 0
}

// clipMessage cuts msg to at most n bytes without splitting a UTF-8
// character: proto.md strings are UTF-8, error messages included.
func clipMessage(msg string, n int) string {
	if len(msg) <= n {
		return msg
	}
	for n > 0 && !utf8.RuneStart(msg[n]) {
		n--
	}
	return msg[:n]
}
