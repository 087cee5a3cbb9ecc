package engine

import "unsafe"

// alignDown and alignUp round x to a multiple of a, a power of two: the
// one pair of helpers for O_DIRECT spans, device sectors and extents.
func alignDown(x, a uint64) uint64 { return x &^ (a - 1) }
func alignUp(x, a uint64) uint64   { return (x + a - 1) &^ (a - 1) }

// isAligned reports whether x is a multiple of a, a power of two.
func isAligned(x, a uint64) bool { return x&(a-1) == 0 }

// bytesAt returns a pointer to b's first byte for handing to the kernel.
func bytesAt(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }
