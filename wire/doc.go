// Package wire is the NBD protocol and nothing else: constants, fixed-offset
// encoding and decoding of every message, the server's option-haggling state
// machine, the client's handshake, the one request validator and the one
// errno mapping. It does no I/O of its own (the client handshake reads and
// writes through an io.ReadWriter it is handed) and nothing here allocates on
// the transmission-phase path.
//
// Byte layouts (big-endian; offsets in bytes), from doc/proto.md:
//
// Server greeting, fixed newstyle (18 bytes):
//
//	0       8        16     18
//	+-------+--------+------+
//	|NBDMAGIC|IHAVEOPT|flags |   flags: FIXED_NEWSTYLE | NO_ZEROES
//	+-------+--------+------+
//
// Client flags (4 bytes), then option requests (16-byte header + data):
//
//	0          8        12       16
//	+----------+--------+--------+----------+
//	| IHAVEOPT | option | length | data ... |
//	+----------+--------+--------+----------+
//
// Option reply (20-byte header + data):
//
//	0           8        12     16       20
//	+-----------+--------+------+--------+----------+
//	| REP magic | option | type | length | data ... |
//	+-----------+--------+------+--------+----------+
//
// Transmission request, compact header (28 bytes), WRITE payload follows:
//
//	0       4       6      8        16       24       28
//	+-------+-------+------+--------+--------+--------+
//	| magic | flags | type | cookie | offset | length |
//	+-------+-------+------+--------+--------+--------+
//
// Simple reply (16 bytes), READ data follows on success:
//
//	0       4       8        16
//	+-------+-------+--------+
//	| magic | error | cookie |
//	+-------+-------+--------+
//
// Structured reply chunk (20-byte header + payload):
//
//	0       4       6      8        16       20
//	+-------+-------+------+--------+--------+-----------+
//	| magic | flags | type | cookie | length | payload...|
//	+-------+-------+------+--------+--------+-----------+
//
// OFFSET_DATA payload: offset (8) + data. ERROR payload: error (4) +
// message length (2) + message.
package wire
