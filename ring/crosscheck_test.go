package ring

import (
	"context"
	_ "embed"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pvusb/pvusb/internal/ctest"
)

//go:embed testdata/ringpeer.c
var ringpeerC string

type urbReq = [148]byte
type urbRsp = [16]byte

// turn is the message the two peers pass: how many entries this side
// pushed, what its push-and-check said about notifying, and the end.
type turn struct{ count, notify, done uint32 }

type peerPipe struct {
	in     io.Reader
	out    io.Writer
	cmd    *exec.Cmd
	stderr *limitedBuffer
}

// fatal stops the test with what the C peer said about it.
func (p peerPipe) fatal(t *testing.T, format string, args ...any) {
	t.Helper()
	_ = p.cmd.Wait()
	t.Fatalf(format+"\nC peer: %s", append(args, p.stderr.String())...)
}

func (p peerPipe) get(t *testing.T) turn {
	var b [12]byte
	if _, err := io.ReadFull(p.in, b[:]); err != nil {
		p.fatal(t, "read from C peer: %v", err)
	}
	return turn{binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint32(b[4:]), binary.LittleEndian.Uint32(b[8:])}
}

func (p peerPipe) put(t *testing.T, m turn) {
	var b [12]byte
	binary.LittleEndian.PutUint32(b[0:], m.count)
	binary.LittleEndian.PutUint32(b[4:], m.notify)
	binary.LittleEndian.PutUint32(b[8:], m.done)
	if _, err := p.out.Write(b[:]); err != nil {
		p.fatal(t, "write to C peer: %v", err)
	}
}

func fnv(b []byte) int32 {
	h := uint32(2166136261)
	for _, c := range b {
		h ^= uint32(c)
		h *= 16777619
	}
	return int32(h & 0x7fffffff)
}

func b2u(v bool) uint32 {
	if v {
		return 1
	}
	return 0
}

// TestCrossCheckWithRingH runs the Go back ring against a C front built
// from ring.h's macros, then the Go front against a C back, each in its own
// process sharing one mmap'd page: thousands of requests, across the 2^32
// index wrap, every id, checksum and notify decision checked by both sides.
func TestCrossCheckWithRingH(t *testing.T) {
	exe := ctest.Build(t, "ringpeer", ringpeerC)
	for _, tc := range []struct {
		goSide string
		start  uint32
		total  uint32
		seed   uint64
	}{
		{"back", 0, 3000, 1},
		{"back", 1<<32 - 1500, 4000, 2},
		{"front", 0, 3000, 3},
		{"front", 1<<32 - 1500, 4000, 4},
		{"front", 1<<32 - 7, 2000, 5},
	} {
		t.Run(fmt.Sprintf("go-%s/start=%d", tc.goSide, tc.start), func(t *testing.T) {
			crossCheck(t, exe, tc.goSide, tc.start, tc.total, tc.seed)
		})
	}
}

func crossCheck(t *testing.T, exe, goSide string, start, total uint32, seed uint64) {
	pagePath := filepath.Join(t.TempDir(), "page")
	if err := os.WriteFile(pagePath, make([]byte, PageSize), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(pagePath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	page, err := unix.Mmap(int(f.Fd()), 0, PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(page)
	if goSide == "front" || start != 0 {
		InitShared(page, start) // with the C front at 0, XEN_FRONT_RING_INIT does it
	}

	toC, toCw, _ := os.Pipe()
	fromCr, fromC, _ := os.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cSide := map[string]string{"back": "front", "front": "back"}[goSide]
	cmd := exec.CommandContext(ctx, exe, cSide, pagePath, fmt.Sprint(seed*7919), fmt.Sprint(start), fmt.Sprint(total))
	cmd.ExtraFiles = []*os.File{toC, fromC} // fd 3: C reads; fd 4: C writes
	var stderr limitedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	toC.Close()
	fromC.Close()
	p := peerPipe{in: fromCr, out: toCw, cmd: cmd, stderr: &stderr}
	rng := rand.New(rand.NewPCG(seed, 99))
	if goSide == "back" {
		goBack(t, page, p, start, rng)
	} else {
		goFront(t, page, p, start, total, rng)
	}
	toCw.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("C peer: %v\n%s", err, stderr.String())
	}
}

func goBack(t *testing.T, page []byte, p peerPipe, start uint32, rng *rand.Rand) {
	b := AttachBack[urbReq, urbRsp](page, start)
	type pend struct {
		id  uint16
		sum int32
	}
	var pending []pend
	seen := start // the C front may have pushed already
	served := 0
	for {
		m := p.get(t)
		if m.done == 1 {
			if len(pending) != 0 || b.Pending() != 0 {
				t.Fatalf("front done with %d requests unanswered", len(pending))
			}
			if served < 1000 {
				t.Fatalf("only %d requests served", served)
			}
			return
		}
		np, ev := load(page, OffReqProd), load(page, OffReqEvent)
		if want := m.count > 0 && notifyNeeded(seen, np, ev); b2u(want) != m.notify {
			t.Fatalf("C front's notify %d, Go says %v (req_prod %d->%d, req_event %d)", m.notify, want, seen, np, ev)
		}
		for {
			n, err := b.Poll()
			if err != nil {
				t.Fatal(err)
			}
			for take := rng.IntN(int(n) + 1); take > 0; take-- {
				var e urbReq
				if !b.NextRequest(&e) {
					t.Fatal("NextRequest false within Poll's count")
				}
				pending = append(pending, pend{binary.LittleEndian.Uint16(e[:]), fnv(e[:])})
			}
			if rng.IntN(2) == 0 {
				break // sometimes leave req_event stale
			}
			more, err := b.FinalCheckForRequests()
			if err != nil {
				t.Fatal(err)
			}
			if !more {
				break
			}
		}
		seen = load(page, OffReqProd)
		n := rng.IntN(len(pending) + 1)
		if m.count == 0 && len(pending) > 0 && n == 0 {
			n = 1
		}
		for range n {
			i := rng.IntN(len(pending))
			var r urbRsp
			binary.LittleEndian.PutUint16(r[0:], pending[i].id)
			binary.LittleEndian.PutUint32(r[8:], uint32(pending[i].sum))
			if err := b.PutResponse(&r); err != nil {
				t.Fatal(err)
			}
			pending[i] = pending[len(pending)-1]
			pending = pending[:len(pending)-1]
			served++
		}
		notify := false
		if n > 0 {
			notify = b.PushResponses()
		}
		p.put(t, turn{uint32(n), b2u(notify), 0})
	}
}

func goFront(t *testing.T, page []byte, p peerPipe, start, total uint32, rng *rand.Rand) {
	f := AttachFront[urbReq, urbRsp](page, start)
	want := map[uint16]int32{}
	var sent, done uint32
	seen, myEvent := start, start+1
	for first := true; ; first = false {
		if !first {
			m := p.get(t)
			np := load(page, OffRspProd)
			if w := m.count > 0 && notifyNeeded(seen, np, myEvent); b2u(w) != m.notify {
				t.Fatalf("C back's notify %d, Go says %v (rsp_prod %d->%d, rsp_event %d)", m.notify, w, seen, np, myEvent)
			}
		}
		for {
			if _, err := f.Poll(); err != nil {
				t.Fatal(err)
			}
			var r urbRsp
			for f.NextResponse(&r) {
				id := binary.LittleEndian.Uint16(r[0:])
				sum, ok := want[id]
				if !ok {
					t.Fatalf("response for id %d not in flight", id)
				}
				if got := int32(binary.LittleEndian.Uint32(r[8:])); got != sum {
					t.Fatalf("id %d: actual_length %d, want checksum %d", id, got, sum)
				}
				delete(want, id)
				done++
			}
			if rng.IntN(2) == 0 {
				break
			}
			more, err := f.FinalCheckForResponses()
			if err != nil {
				t.Fatal(err)
			}
			if !more {
				break
			}
		}
		seen, myEvent = load(page, OffRspProd), load(page, OffRspEvent)
		if done == total {
			p.put(t, turn{done: 1})
			return
		}
		k := min(uint32(rng.IntN(int(f.FreeRequests())+1)), total-sent)
		for range k {
			var e urbReq
			for i := range e {
				e[i] = byte(rng.Uint32())
			}
			id := uint16(start + sent)
			binary.LittleEndian.PutUint16(e[:], id)
			if _, busy := want[id]; busy {
				t.Fatalf("id %d reused", id)
			}
			want[id] = fnv(e[:])
			if err := f.PutRequest(&e); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		notify := false
		if k > 0 {
			notify = f.PushRequests()
		}
		p.put(t, turn{k, b2u(notify), 0})
	}
}

// limitedBuffer keeps the first 64 KiB a child writes to stderr.
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 64<<10 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }
