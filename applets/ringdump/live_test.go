package ringdump

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pvusb/pvusb/ring"
)

// fakeSource serves the golden pages and changes the urb page after a
// few snapshots, as a live ring would.
type fakeSource struct {
	mu    sync.Mutex
	pages []byte
	calls int
	after int
	next  []byte
}

func (f *fakeSource) Snapshot(dst []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.calls == f.after {
		copy(f.pages, f.next)
	}
	copy(dst, f.pages)
}
func (f *fakeSource) NumPorts() int    { return 8 }
func (f *fakeSource) Describe() string { return "fake vusb" }
func (f *fakeSource) Close() error     { return nil }

func goldenPair(t *testing.T, urb, conn string) []byte {
	t.Helper()
	u, err := os.ReadFile(ringsDir + "/" + urb)
	if err != nil {
		t.Fatal(err)
	}
	c, err := os.ReadFile(ringsDir + "/" + conn)
	if err != nil {
		t.Fatal(err)
	}
	return append(u, c...)
}

func TestLiveOnceAndWatch(t *testing.T) {
	src := &fakeSource{pages: goldenPair(t, "enumerate.urb.bin", "prepost.conn.bin")}
	var out bytes.Buffer
	if err := runLive(context.Background(), &out, src, liveConfig{json: true}); err != nil {
		t.Fatal(err)
	}
	var d liveDump
	if err := json.Unmarshal(out.Bytes(), &d); err != nil {
		t.Fatal(err)
	}
	if d.URB.Kind != "urb" || d.Conn.Kind != "conn" || d.Conn.Outstanding != 511 || *d.Conn.Responses[0].Portnum != 2 {
		t.Errorf("live dump %+v %+v", d.URB, d.Conn)
	}

	// Watch: a frame at start, one when the urb page changes, none while
	// it is unchanged; --frames 2 ends it.
	next := goldenPair(t, "bulk-full.urb.bin", "prepost.conn.bin")
	src = &fakeSource{pages: goldenPair(t, "enumerate.urb.bin", "prepost.conn.bin"), after: 5, next: next}
	out.Reset()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := runLive(ctx, &out, src, liveConfig{watch: true, interval: time.Millisecond, frames: 2}); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	if strings.Count(text, "=== frame") != 2 || !strings.Contains(text, "=== frame 2") || !strings.Contains(text, "16 request(s) posted") {
		t.Errorf("watch output:\n%s", text)
	}
	if src.calls < 5 {
		t.Errorf("only %d snapshots", src.calls)
	}
	_ = ring.PageSize
}
