package wire

import (
	"fmt"
	"testing"
)

func BenchmarkDecodeRequest(b *testing.B) {
	var buf [RequestSize]byte
	EncodeRequest(buf[:], &Request{Type: CmdRead, Cookie: 9, Offset: 1 << 30, Length: 4096})
	var r Request
	b.ReportAllocs()
	b.SetBytes(RequestSize)
	for i := 0; i < b.N; i++ {
		if err := DecodeRequest(buf[:], &r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkValidate(b *testing.B) {
	s := Session{Size: 1 << 40, Flags: TxSendFUA | TxSendFlush, BlockMin: 512, Strict: true}
	r := Request{Type: CmdWrite, Flags: CmdFlagFUA, Offset: 1 << 30, Length: 4096}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if s.Validate(&r) != EOK {
			b.Fatal("rejected")
		}
	}
}

func BenchmarkEncodeReply(b *testing.B) {
	var buf [ReplyHeaderMax]byte
	for _, st := range []ReplyStyle{StyleSimple, StyleStructured, StyleExtended} {
		b.Run(fmt.Sprintf("style=%d", st), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				EncodeRead(buf[:], st, uint64(i), 4096, 4096, 4096, true)
			}
		})
	}
}
