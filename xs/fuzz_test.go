package xs

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzReadMsg decodes arbitrary bytes as messages: never a panic, never a
// payload over the limit, and what decodes re-encodes to the same bytes.
func FuzzReadMsg(f *testing.F) {
	m, _ := AppendMsg(nil, Msg{Op: OpWrite, ReqID: 7, Payload: append(joinNul("/a/b"), "v"...)})
	f.Add(m)
	f.Add([]byte{2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		for {
			before := r.Len()
			m, err := ReadMsg(r)
			if err != nil {
				return
			}
			if len(m.Payload) > PayloadMax {
				t.Fatal("payload over the limit")
			}
			enc, err := AppendMsg(nil, m)
			if err != nil || !bytes.Equal(enc, b[len(b)-before:len(b)-r.Len()]) {
				t.Fatal("re-encoding differs")
			}
		}
	})
}

// FuzzServerConnection feeds one connection (dom1, or dom0 when the first
// byte is odd) an arbitrary byte stream while a second connection works:
// the server must not panic, the other connection must get exactly its
// own replies, and dom1 must stay within its quotas.
func FuzzServerConnection(f *testing.F) {
	var seed []byte
	for _, m := range []Msg{
		{Op: OpWrite, ReqID: 1, Payload: append(joinNul("data/x"), "1"...)},
		{Op: OpWatch, ReqID: 2, Payload: joinNul("data", "t")},
		{Op: OpTransactionStart, ReqID: 3, Payload: []byte{0}},
		{Op: OpWrite, ReqID: 4, TxID: 1, Payload: append(joinNul("data/y"), "2"...)},
		{Op: OpTransactionEnd, ReqID: 5, TxID: 1, Payload: joinNul("T")},
		{Op: OpRm, ReqID: 6, Payload: joinNul("data")},
		{Op: OpSetPerms, ReqID: 7, Payload: joinNul("data", "n1", "r0")},
		{Op: OpDirectoryPart, ReqID: 8, Payload: joinNul("/", "0")},
	} {
		seed, _ = AppendMsg(seed, m)
	}
	f.Add(append([]byte{0}, seed...))
	f.Add(append([]byte{1}, seed...))
	q := Quotas{MaxValueSize: 64, MaxNodesPerDomain: 20, MaxWatchesPerConn: 4, MaxTransactionsConn: 2, MaxQueuedEvents: 256}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		s := NewServer(nil, q)
		s.IntroduceDomain(1)
		dom := uint32(1)
		if data[0]&1 == 1 {
			dom = 0
		}
		a, b := net.Pipe()
		done := make(chan struct{})
		go func() { s.ServeConn(a, dom); close(done) }()
		go io.Copy(io.Discard, b)

		// The bystander: a dom1 connection doing its own work.
		oa, ob := net.Pipe()
		go s.ServeConn(oa, 1)
		other := NewClient(ob)
		defer other.Close()

		b.SetWriteDeadline(time.Now().Add(5 * time.Second))
		b.Write(data[1:])
		b.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("server did not finish the connection")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		v, err := other.roundTrip(ctx, OpGetDomainPath, 0, joinNul("1"))
		if err != nil || string(v) != "/local/domain/1\x00" {
			t.Fatalf("bystander got %q, %v", v, err)
		}
		s.mu.Lock()
		owned := s.t.owned[1]
		s.mu.Unlock()
		if owned > q.MaxNodesPerDomain+1 { // +1: the home node dom0 created and gave it
			t.Fatalf("dom1 owns %d nodes, quota %d", owned, q.MaxNodesPerDomain)
		}
	})
}
