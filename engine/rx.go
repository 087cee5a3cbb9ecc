package engine

// rx is a shard's receive side for its connections: the receive pool
// (recvpool.go), each connection's read cursor and the list of receives
// that found the pool empty. The decoder asks it for bytes (avail, peek,
// consume); a receive's completion hands it the buffers the kernel filled
// (received) or tells it the pool was empty (starve). It calls nothing
// but the pool, and names connections by index only.
//
// Invariants (checked by check under -tags invariants):
//   - a cursor's queued is the sum of fill-off over the buffers listed from
//     rxHead, and rxTail is that list's last buffer (-1 with an empty list);
//   - winBid >= 0 exactly when win is that pool buffer;
//   - after settle a cursor holds no pool buffer (winBid < 0, rxHead < 0):
//     an idle connection holds only the few bytes of a partial header, in
//     its carry;
//   - a starved cursor is on the starved list once (starve sets the flag
//     and appends; takeStarved clears it; reset drops it).
type rx struct {
	pool  *recvPool // made with the ring, in shard.run
	cur   []rxCursor
	stats *ShardStats
	// starved: connections whose receive found the pool empty, armed again
	// once buffers are back; spare swaps with it while those are retried.
	starved, spare []int32
}

// rxCursor is one connection's received bytes not yet parsed: win[rlo:rhi],
// then the pool buffers queued from rxHead to rxTail (queued bytes in all).
// win is a pool buffer (winBid), the carry (a header split across buffers,
// or left incomplete), or a TLS connection's plaintext staging buffer.
type rxCursor struct {
	win            []byte
	rlo, rhi       int
	winBid         int32 // the pool buffer win is, or -1
	rxHead, rxTail int32 // pool buffers queued, or -1
	queued         int
	carry          [carryMax]byte
	starved        bool // on rx.starved
}

// init sizes rx for conns connections; the pool comes later (shard.run).
func (r *rx) init(conns int, stats *ShardStats) {
	r.cur = make([]rxCursor, conns)
	r.stats = stats
	r.starved = make([]int32, 0, conns)
	r.spare = make([]int32, 0, conns)
	for ci := range int32(conns) {
		r.reset(ci, nil)
	}
}

// reset readies connection ci's cursor for a new connection; stage is a
// TLS connection's plaintext buffer (nil: plaintext from the pool).
func (r *rx) reset(ci int32, stage []byte) {
	r.cur[ci] = rxCursor{win: stage, winBid: -1, rxHead: -1, rxTail: -1}
}

// avail is how many bytes connection ci has received and not parsed: its
// window and its queued buffers.
func (r *rx) avail(ci int32) int {
	c := &r.cur[ci]
	return c.rhi - c.rlo + c.queued
}

// pooled reports whether connection ci holds pool buffers.
func (r *rx) pooled(ci int32) bool {
	c := &r.cur[ci]
	return c.winBid >= 0 || c.rxHead >= 0
}

// publish makes the buffers given back this turn visible to the kernel and
// counts how many it may fill.
func (r *rx) publish() {
	r.pool.publish()
	r.stats.RecvBufsFree.Store(int64(r.pool.free))
}

// nextWin moves a cursor whose window is parsed on to its next queued
// buffer, giving the parsed one back to the pool.
func (r *rx) nextWin(c *rxCursor) {
	p := r.pool
	if c.winBid >= 0 {
		p.put(uint16(c.winBid))
		c.winBid = -1
	}
	if c.rxHead < 0 {
		c.win, c.rlo, c.rhi = c.carry[:0], 0, 0
		return
	}
	bid := c.rxHead
	c.rxHead = p.next[bid]
	if c.rxHead < 0 {
		c.rxTail = -1
	}
	c.queued -= int(p.fill[bid] - p.off[bid])
	c.win, c.rlo, c.rhi, c.winBid = p.buf(uint16(bid)), int(p.off[bid]), int(p.fill[bid]), bid
}

// peek returns connection ci's next n bytes (n <= carryMax) contiguous,
// without consuming them, or nil when fewer have arrived. Bytes split
// across buffers are gathered into the carry.
func (r *rx) peek(ci int32, n int) []byte {
	c := &r.cur[ci]
	for c.rhi-c.rlo < n {
		if c.rhi-c.rlo+c.queued < n {
			return nil
		}
		if c.rlo == c.rhi {
			r.nextWin(c)
			continue
		}
		r.gather(c, n)
	}
	return c.win[c.rlo : c.rlo+n]
}

// gather makes the carry the window, holding the window's bytes and then
// queued bytes, up to n of them.
func (r *rx) gather(c *rxCursor, n int) {
	k := copy(c.carry[:], c.win[c.rlo:c.rhi])
	p := r.pool
	if c.winBid >= 0 {
		p.put(uint16(c.winBid))
		c.winBid = -1
	}
	for k < n && c.rxHead >= 0 {
		bid := c.rxHead
		m := copy(c.carry[k:n], p.buf(uint16(bid))[p.off[bid]:p.fill[bid]])
		p.off[bid] += uint16(m)
		k += m
		c.queued -= m
		if p.off[bid] == p.fill[bid] {
			c.rxHead = p.next[bid]
			if c.rxHead < 0 {
				c.rxTail = -1
			}
			p.put(uint16(bid))
		}
	}
	c.win, c.rlo, c.rhi = c.carry[:], 0, k
}

// consume takes up to n of connection ci's received bytes, copying them to
// dst unless it is nil (a drained payload), and returns how many it took.
// Buffers it empties go back to the pool at once.
func (r *rx) consume(ci int32, dst []byte, n int) int {
	c := &r.cur[ci]
	got := 0
	for got < n {
		if c.rlo == c.rhi {
			if c.rxHead < 0 {
				break
			}
			r.nextWin(c)
			continue
		}
		m := min(n-got, c.rhi-c.rlo)
		if dst != nil {
			copy(dst[got:], c.win[c.rlo:c.rlo+m])
		}
		c.rlo += m
		got += m
	}
	if c.rlo == c.rhi && c.winBid >= 0 {
		r.nextWin(c)
	}
	return got
}

// settle readies a pooled connection for its next receive: the few bytes
// of a header still incomplete move to the carry, so no buffer stays held
// while the connection waits for the rest. A TLS cursor holds no pool
// buffer and is left as it is.
func (r *rx) settle(ci int32) {
	c := &r.cur[ci]
	if c.winBid < 0 && c.rxHead < 0 {
		return
	}
	assert(r.avail(ci) < carryMax, "receive pool: more than a partial header left unparsed")
	r.gather(c, carryMax)
	r.check(ci)
	assert(!r.pooled(ci), "receive pool: a settled connection still holds pool buffers")
}

// received queues on connection ci the buffers a receive of res bytes
// filled, starting with buffer first.
func (r *rx) received(ci int32, first uint16, res int) {
	r.stats.Recvs.Add(1)
	c, p := &r.cur[ci], r.pool
	for i := 0; res > 0; i++ {
		bid := int32(p.take(first, i))
		n := min(res, recvPoolBufSize)
		p.next[bid], p.off[bid], p.fill[bid] = -1, 0, uint16(n)
		if c.rxHead < 0 {
			c.rxHead = bid
		} else {
			p.next[c.rxTail] = bid
		}
		c.rxTail = bid
		c.queued += n
		r.stats.RecvBufs.Add(1)
		res -= n
	}
	r.check(ci)
}

// dropBuffers gives back the buffers of a receive nobody will parse (its
// connection is closing, or the completion is stale).
func (r *rx) dropBuffers(first uint16, res int) {
	p := r.pool
	for i := 0; res > 0; i++ {
		p.put(p.take(first, i))
		res -= min(res, recvPoolBufSize)
	}
}

// release gives back every buffer connection ci holds (it is released).
func (r *rx) release(ci int32) {
	c := &r.cur[ci]
	for c.rxHead >= 0 || c.winBid >= 0 {
		c.rlo = c.rhi
		r.nextWin(c)
	}
	c.queued = 0
}

// starve records that connection ci's receive found the pool empty.
func (r *rx) starve(ci int32) {
	assert(!r.cur[ci].starved, "receive pool: a connection starved twice")
	r.stats.RecvNoBufs.Add(1)
	r.cur[ci].starved = true
	r.starved = append(r.starved, ci)
}

// takeStarved returns the connections to arm again now that the pool has
// buffers (none while it is empty), and clears their flags. The slice is
// valid until the next call; starve may be called meanwhile.
func (r *rx) takeStarved() []int32 {
	if len(r.starved) == 0 || r.pool.free == 0 {
		return nil
	}
	w := r.starved
	r.starved, r.spare = r.spare[:0], w
	k := 0
	for _, ci := range w {
		if r.cur[ci].starved { // else released since (reset drops it)
			r.cur[ci].starved = false
			w[k] = ci
			k++
		}
	}
	return w[:k]
}

// stage is a TLS connection's plaintext buffer with the parsed bytes
// dropped: the room after its unparsed bytes is where decrypted bytes go
// (staged).
func (r *rx) stage(ci int32) []byte {
	c := &r.cur[ci]
	if c.rlo > 0 {
		c.rhi = copy(c.win, c.win[c.rlo:c.rhi])
		c.rlo = 0
	}
	return c.win[c.rhi:]
}

// staged counts n decrypted bytes written into stage's room.
func (r *rx) staged(ci int32, n int) { r.cur[ci].rhi += n }

// stageFull reports whether a TLS connection's staging buffer holds only
// unparsed bytes.
func (r *rx) stageFull(ci int32) bool {
	c := &r.cur[ci]
	return c.rhi-c.rlo == len(c.win)
}

// check asserts cursor ci's invariants (a walk of its queue: only with
// -tags invariants).
func (r *rx) check(ci int32) {
	if !invariantsOn {
		return
	}
	c, p := &r.cur[ci], r.pool
	n, last := 0, int32(-1)
	for b := c.rxHead; b >= 0; b = p.next[b] {
		n += int(p.fill[b] - p.off[b])
		last = b
	}
	assert(n == c.queued, "receive pool: queued bytes differ from the buffers queued")
	assert(last == c.rxTail, "receive pool: rxTail is not the queue's last buffer")
	assert(c.rlo <= c.rhi && c.rhi <= len(c.win), "receive pool: window out of bounds")
}
