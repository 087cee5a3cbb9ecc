package wire

import (
	"bytes"
	"testing"
)

// hsDriveDenied runs options against a handshake that denies export 1
// ("ro" of hsExports) to this client, as the server does for an export
// whose allow rules leave out the client's address.
func hsDriveDenied(in []byte) tlsTranscript {
	h := NewServerHandshake(hsExports())
	h.Deny(1)
	return hsDriveWith(h, in)
}

// TestDeniedExport: an export denied to this client is not listed, INFO
// and GO get ERR_POLICY (and the next option is still read in step), its
// EXPORT_NAME for it closes; the other export
// is served as usual.
func TestDeniedExport(t *testing.T) {
	tr := hsDriveDenied(cat(u32b(3), optMsg(nOptList, nil)))
	for _, r := range parseReplies(t, tr.out) {
		if r.typ == nRepServer && bytes.Contains(r.data, []byte("ro")) {
			t.Fatalf("LIST shows the denied export: %q", r.data)
		}
	}
	tr = hsDriveDenied(cat(u32b(3), optMsg(nOptInfo, goReq("ro")),
		optMsg(nOptGo, goReq("ro")), optMsg(nOptGo, goReq(""))))
	reps := parseReplies(t, tr.out)
	expectReplies(t, reps[:2], errRep(nOptInfo, nRepErrPolicy), errRep(nOptGo, nRepErrPolicy))
	if tr.step != StepServe || tr.h.Result.Export != 0 {
		t.Fatalf("GO for the allowed export after the refusals: step %v, export %d",
			tr.step, tr.h.Result.Export)
	}
	tr = hsDriveDenied(cat(u32b(3), optMsg(nOptExportName, []byte("ro"))))
	if tr.step != StepClose || len(tr.out) != 0 {
		t.Fatalf("EXPORT_NAME for the denied export: step %v, sent % x", tr.step, tr.out)
	}
	tr = hsDriveDenied(cat(u32b(3), optMsg(nOptExportName, nil)))
	if tr.step != StepServe {
		t.Fatalf("EXPORT_NAME for the allowed export: step %v", tr.step)
	}
}
