package engine

import "testing"

// newTestSlots is a slot table alone, with no shard: 4 slots of which 2
// shared, 2 connections, a 64 KiB arena of which 32 KiB shared, 16 KiB
// per connection, 32 KiB for a request alone from the reserve.
func newTestSlots(t *testing.T) (*slotTable, *ShardStats) {
	t.Helper()
	ar, err := newArena(64 << 10)
	if err != nil {
		skipMissing(t, "memory", "cannot map an arena here: %v", err)
	}
	t.Cleanup(ar.close)
	lim := &sizing{conns: 2, slots: 4, slotsShared: 2, connBuf: 16 << 10,
		shared: 32 << 10, resvReq: 32 << 10}
	st := new(ShardStats)
	tab := new(slotTable)
	tab.init(lim, ar, st, nil)
	return tab, st
}

// give allocates slot si's span buffer, as the device's allocData does.
func give(tab *slotTable, si int32, n int) bool {
	b, h, ok := tab.allocArena(si, n)
	if ok {
		tab.rows[si].data, tab.rows[si].buf = b, h
	}
	return ok
}

// TestSlotTableReserve: once the shared slots are taken, a connection
// that holds a slot waits, and one that holds none gets a reserved one
// (slotsPerShardMax: no tenant can take the reserve).
func TestSlotTableReserve(t *testing.T) {
	tab, st := newTestSlots(t)
	exp := &Export{Name: "t"}
	a, b := tab.alloc(0, exp), tab.alloc(0, exp)
	if a < 0 || b < 0 {
		t.Fatal("the shared slots were refused")
	}
	if tab.alloc(0, exp) >= 0 {
		t.Fatal("a connection holding slots took one from the reserve")
	}
	r := tab.alloc(1, exp)
	if r < 0 || !tab.rows[r].slotResv {
		t.Fatalf("a connection with no slot got %d, want a reserved one", r)
	}
	if tab.alloc(1, exp) >= 0 {
		t.Fatal("a second reserved slot for one connection")
	}
	if st.Inflight.Load() != 3 || tab.sharedSlots != 2 {
		t.Fatalf("%d slots in flight, %d shared; want 3 and 2", st.Inflight.Load(),
			tab.sharedSlots)
	}
	tab.release(a)
	tab.put(a)
	if s := tab.alloc(0, exp); s != a || tab.rows[s].slotResv {
		t.Fatalf("after a free the connection got %d, want the shared %d", s, a)
	}
}

// TestSlotTableBudget: a connection's requests share its arena budget; a
// request alone on its connection may exceed it; the shared part is the
// ceiling for all, and beyond it only a lone request takes the reserve.
func TestSlotTableBudget(t *testing.T) {
	tab, st := newTestSlots(t)
	exp := &Export{Name: "t"}
	a, b := tab.alloc(0, exp), tab.alloc(0, exp)
	if ok := give(tab, a, 16<<10); !ok {
		t.Fatal("a request within its connection's budget was refused")
	}
	if ok := give(tab, b, 4<<10); ok {
		t.Fatal("a second request went past its connection's 16 KiB budget")
	}
	c := tab.alloc(1, exp) // reserved slot, alone on its connection
	if ok := give(tab, c, 16<<10); !ok || tab.rows[c].bufResv {
		t.Fatal("a lone request was refused 16 KiB of the shared part, or took the reserve")
	}
	tab.release(c)
	tab.put(c)
	c = tab.alloc(1, exp)
	if ok := give(tab, c, 32<<10); !ok || !tab.rows[c].bufResv {
		t.Fatal("a lone request past the shared part did not get the reserve")
	}
	if st.ArenaBytes.Load() != 48<<10 || tab.sharedBytes != 16<<10 {
		t.Fatalf("arena bytes %d, shared %d; want 48 and 16 KiB", st.ArenaBytes.Load(),
			tab.sharedBytes)
	}
	tab.release(a)
	tab.put(a)
	if tab.connBytes[0] != 0 || st.ArenaBytes.Load() != 32<<10 || tab.sharedBytes != 0 {
		t.Fatalf("after a free: connection holds %d bytes, arena %d", tab.connBytes[0],
			st.ArenaBytes.Load())
	}
}

// TestSlotTableConnGone: a slot that outlives its connection (released,
// still held by the kernel) is uncounted from the next connection at that
// index no more when it is finally freed.
func TestSlotTableConnGone(t *testing.T) {
	tab, _ := newTestSlots(t)
	exp := &Export{Name: "t"}
	old := tab.alloc(0, exp)
	if ok := give(tab, old, 8<<10); !ok {
		t.Fatal("no buffer")
	}
	tab.release(old) // the kernel still holds it: not put yet
	tab.connGone(0)
	cur := tab.alloc(0, exp) // the next connection at index 0
	if ok := give(tab, cur, 4<<10); !ok {
		t.Fatal("no buffer")
	}
	tab.put(old)
	if tab.connSlots[0] != 1 || tab.connBytes[0] != 4<<10 {
		t.Fatalf("the new connection counts %d slots, %d bytes; want 1 and 4 KiB",
			tab.connSlots[0], tab.connBytes[0])
	}
}

// TestSlotTableInvariants: freeing a live slot, or releasing one twice,
// is refused by the invariants build.
func TestSlotTableInvariants(t *testing.T) {
	needInvariants(t)
	tab, _ := newTestSlots(t)
	si := tab.alloc(0, &Export{Name: "t"})
	refused(t, "a live slot put back", func() { tab.put(si) })
	tab.release(si)
	refused(t, "a slot released twice", func() { tab.release(si) })
}
