package xs

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// testServer serves dom0 on a socket in a temp dir and returns the server,
// the socket path and a dom0 client.
func testServer(t testing.TB, q Quotas) (*Server, string, *Client) {
	t.Helper()
	s := NewServer(nil, q)
	sock := filepath.Join(t.TempDir(), "xenstored.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l, 0)
	t.Cleanup(func() { l.Close(); s.Close() })
	c, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return s, sock, c
}

// domClient connects a client as domain dom over a socketpair.
func domClient(t *testing.T, s *Server, dom uint32) *Client {
	t.Helper()
	a, b := net.Pipe()
	go s.ServeConn(a, dom)
	c := NewClient(b)
	t.Cleanup(func() { c.Close() })
	return c
}

// nextEvent waits for a watch event; a panic timer guards the wait
// instead of a sleep.
func nextEvent(t *testing.T, w *Watch) Event {
	t.Helper()
	select {
	case e, ok := <-w.Events:
		if !ok {
			t.Fatal("watch closed")
		}
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no watch event within 10s")
	}
	return Event{}
}

// noEvent asserts that nothing is queued on the watch after a round trip
// that the server orders after any event the previous change could fire.
func noEvent(t *testing.T, c *Client, w *Watch) {
	t.Helper()
	if _, err := c.GetDomainPath(0); err != nil { // events are queued before this reply
		t.Fatal(err)
	}
	select {
	case e := <-w.Events:
		t.Fatalf("unexpected event %+v", e)
	case <-time.After(50 * time.Millisecond):
	}
}
