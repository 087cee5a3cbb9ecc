package engine

// snapshot reads shard sh's counters for the exports served now: the
// tests' view of one shard (Server.Snapshot reads them all).
func (sh *shard) snapshot() ShardSnapshot {
	var idx []int
	for _, e := range sh.srv.reg.exportsNow() {
		idx = append(idx, e.reg.idx)
	}
	return sh.m.snapshotOf(&sh.stats, sh.ring, sh.id, sh.cpu, idx)
}
