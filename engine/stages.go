package engine

import "time"

// Per-stage request timing. A request's time on the server, from its
// header decoded to its reply handed to the socket (the span of
// nbdring_request_duration_seconds), is cut at three marks into four
// stages that sum to it exactly:
//
//	decoded --receive--> ready --queue--> issued --device--> queued --send--> sent
//
//   - decoded: the request's header was taken off the received bytes.
//   - ready: the request holds a slot and, for a WRITE, its whole payload;
//     so receive is the payload's arrival plus any wait for a slot, a
//     buffer or QoS tokens (0 for a request that needed none of these).
//   - issued: its first device operation was issued (the SQE prepared, or
//     the shard's own pread or pwrite begun); queue is the wait for a
//     range lock and the shard's own work before that. A request that
//     needs no device operation (an error, BLOCK_STATUS, an all-hole
//     READ) has no issued mark: its queue ends at queued, device is 0.
//   - queued: its reply was queued for sending, when its last device
//     operation's completion was handled; device is from issued to there
//     (every device operation of the request, and the ring's turn
//     around them).
//   - sent: its send completed. A send that completed within the
//     io_uring_enter that submitted it (the kernel sends at once on a
//     socket with room) is stamped when it was submitted, so that send
//     does not count the rest of that enter's wait for the next request.
//
// Clock reads are shared: a shard reads the clock once per batch of
// completions, when something in the batch first needs it (batchClock),
// again after a device operation it did itself (inlineDone) and when it
// submits a send (sendIssued). Every mark of one batch gets the same time.

// Stages, the index of shardMetrics.stage and Snapshot's Stages.
const (
	stageReceive = iota
	stageQueue
	stageDevice
	stageSend
	stageCount
)

// stageName labels each stage's histogram: nbdring_request_<name>_seconds.
var stageName = [stageCount]string{"receive", "queue", "device", "send"}

// stageClock is the counters component's part that times stages: the
// batch clock and the marks of every slot and connection.
type stageClock struct {
	now   int64  // the batch clock's time, if nowOK
	nowOK bool   // read in this batch already
	turn  uint64 // batches so far (newBatch)
	// Marks of each slot's request (the shard's monotonic ns); issued is
	// -1 until its first device operation.
	ready  [slotsMax]int64
	issued [slotsMax]int64
	queued [slotsMax]int64
	// Each connection's send in flight: when it was submitted, and in
	// which batch.
	sendAt   [connsPerShardMax]int64
	sendTurn [connsPerShardMax]uint64
}

// newBatch: the shard has a new batch of completions, after a wait for
// wait of them; the next mark reads the clock again, unless the enter did
// not wait (it only submitted: the batch's time is still good, and the
// completions of the shard's own device operations keep inlineDone's).
func (m *shardMetrics) newBatch(wait uint32) {
	if wait > 0 {
		m.st.nowOK = false
	}
	m.st.turn++
}

// batchClock is the time of the current batch, read at its first use.
func (m *shardMetrics) batchClock() int64 {
	if !m.st.nowOK {
		m.st.now, m.st.nowOK = m.clock(), true
	}
	return m.st.now
}

// refresh reads the clock again for what follows in the batch.
func (m *shardMetrics) refresh() int64 {
	m.st.now, m.st.nowOK = m.clock(), true
	return m.st.now
}

// markTimed starts slot si's marks; its request is ready now if it had
// to wait for the slot, else when it was decoded (its connection's
// payload, if any, moves ready on: payloadIn).
func (m *shardMetrics) markTimed(si, ci int32) {
	m.st.ready[si] = m.connStart[ci]
	if m.connWaited[ci] {
		m.st.ready[si] = m.batchClock()
	}
	m.st.issued[si] = -1
}

// payloadIn: slot si's WRITE payload has all arrived.
func (m *shardMetrics) payloadIn(si int32) { m.st.ready[si] = m.batchClock() }

// deviceIssued: slot si issues a device operation; the first one marks it.
func (m *shardMetrics) deviceIssued(si int32) {
	if m.st.issued[si] < 0 {
		m.st.issued[si] = m.batchClock()
	}
}

// inlineDone: the shard has just done slot si's device operation itself;
// its completion is handled later in this batch, at the time read now.
func (m *shardMetrics) inlineDone(si int32) {
	m.deviceIssued(si) // the batch's time, from before the operation
	m.refresh()
}

// replyQueued: slot si's reply is queued for sending.
func (m *shardMetrics) replyQueued(si int32) { m.st.queued[si] = m.batchClock() }

// sendIssued: connection ci submits a send of queued replies.
func (m *shardMetrics) sendIssued(ci int32) {
	m.st.sendAt[ci], m.st.sendTurn[ci] = m.refresh(), m.st.turn
}

// sentAt is when connection ci's send, completed now, handed its replies
// to the socket: when it was submitted, if it completed in the enter that
// submitted it (the first batch after), else now.
func (m *shardMetrics) sentAt(ci int32) int64 {
	if m.st.turn == m.st.sendTurn[ci]+1 {
		return m.st.sendAt[ci]
	}
	return m.batchClock()
}

// observeStages times slot si's stages for command index c, sent at now.
func (m *shardMetrics) observeStages(si int32, c int, now int64) {
	st := &m.st
	queued := st.queued[si]
	issued := st.issued[si]
	if issued < 0 {
		issued = queued
	}
	m.stage[stageReceive][c].observe(st.ready[si] - m.slotStart[si])
	m.stage[stageQueue][c].observe(issued - st.ready[si])
	m.stage[stageDevice][c].observe(queued - issued)
	m.stage[stageSend][c].observe(now - queued)
}

// snapStages copies the stage histograms into out.
func (m *shardMetrics) snapStages(out *[stageCount][cmdLabels]Histogram) {
	for g := range m.stage {
		for c := range m.stage[g] {
			m.stage[g][c].load(&out[g][c])
		}
	}
}

// load copies h into out.
func (h *histogram) load(out *Histogram) {
	*out = Histogram{}
	for b := range h.counts {
		out.Counts[b] = h.counts[b].Load()
		out.Count += out.Counts[b]
	}
	out.Sum = time.Duration(h.sumNs.Load())
}
