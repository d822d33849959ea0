package backend

import (
	"bytes"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/pvusb/pvusb/core/backend/fronttest"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/ring"
)

// goodGuest keeps a well-behaved frontend busy with 4 KiB bulk INs,
// checking every byte, until stopped.
type goodGuest struct {
	r    *rig
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	n    int
	err  error
}

func startGood(r *rig) *goodGuest {
	g := &goodGuest{r: r, stop: make(chan struct{}), done: make(chan struct{})}
	want := make([]byte, 4096)
	for i := range want {
		want[i] = byte(i * 7)
	}
	go func() {
		defer close(g.done)
		pipe := usbif.NewPipe(1, 2, 1, true, usbif.TypeBulk)
		for {
			select {
			case <-g.stop:
				return
			default:
			}
			rsp, data, err := r.front.Do(r.ctx, pipe, nil, nil, 4096, 0)
			g.mu.Lock()
			if err == nil && (rsp.Status != 0 || !bytes.Equal(data, want)) {
				err = errors.New("wrong answer")
			}
			if err != nil {
				g.err = err
				g.mu.Unlock()
				return
			}
			g.n++
			g.mu.Unlock()
		}
	}()
	return g
}

// finish stops the guest and returns how many transfers it completed.
func (g *goodGuest) finish(t *testing.T) int {
	t.Helper()
	close(g.stop)
	<-g.done
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		t.Fatalf("the well-behaved guest failed during the attack: %v", g.err)
	}
	return g.n
}

// TestHostileFrontendSuite runs each attack of a hostile frontend against
// one vusb while another vusb's guest keeps transferring: the attack gets
// the right status or quarantine, nothing panics, the other guest keeps
// working throughout, and once both engines stop no goroutine and no
// grant mapping is left behind.
func TestHostileFrontendSuite(t *testing.T) {
	bulkIn := usbif.NewPipe(1, 2, 1, true, usbif.TypeBulk)
	status := func(want usbif.Status, mut func(*usbif.URBRequest)) func(*testing.T, *rig) {
		return func(t *testing.T, r *rig) {
			r.front.Mutate = mut
			rsp, _, err := r.front.Do(r.ctx, bulkIn, nil, nil, 512, 0)
			r.front.Mutate = nil
			if err != nil || rsp.Status != want {
				t.Fatalf("%+v %v, want %v", rsp, err, want)
			}
			if rsp, _, _ := r.front.Do(r.ctx, bulkIn, nil, nil, 64, 0); rsp.Status != 0 {
				t.Fatalf("the vusb stopped serving after the attack: %+v", rsp)
			}
		}
	}
	ctrl0 := func(port uint8, s usbif.SetupPacket) func(*usbif.URBRequest) {
		return func(q *usbif.URBRequest) {
			q.Pipe = usbif.NewPipe(port, 0, 0, s.In(), usbif.TypeCtrl)
			q.NrBufferSegs = 0
			q.SetSetup(s)
		}
	}
	for _, tc := range []struct {
		name   string
		attack func(*testing.T, *rig)
	}{
		{"producer overflow", func(t *testing.T, r *rig) {
			page := r.front.URBPage()
			ring.StoreIndex(page, ring.OffReqProd, ring.ReadHeader(page).RspProd+17)
			r.front.Kick()
			select {
			case err := <-r.errc:
				r.errc <- err
				if !errors.Is(err, ring.ErrRequestOverflow) {
					t.Fatalf("quarantine reason %v", err)
				}
			case <-r.ctx.Done():
				t.Fatal("not quarantined")
			}
		}},
		{"17 segments", status(usbif.StatusShutdown, func(q *usbif.URBRequest) { q.NrBufferSegs = 17 })},
		{"segment crossing a page", status(usbif.StatusShutdown, func(q *usbif.URBRequest) { q.Seg[0].Offset, q.Seg[0].Length = 4000, 200 })},
		{"bad grant ref", status(usbif.StatusShutdown, func(q *usbif.URBRequest) { q.Seg[0].Gref = 0xdead })},
		{"port 0", status(usbif.StatusNoDev, ctrl0(0, getDevice))},
		{"port 32", status(usbif.StatusNoDev, ctrl0(32, getDevice))},
		{"SET_ADDRESS 128", status(usbif.StatusInval, ctrl0(1, usbif.SetupPacket{Request: usbif.ReqSetAddress, Value: 128}))},
		{"SET_ADDRESS 65535", status(usbif.StatusInval, ctrl0(1, usbif.SetupPacket{Request: usbif.ReqSetAddress, Value: 65535}))},
		{"SET_ADDRESS 0", func(t *testing.T, r *rig) {
			rsp, _ := r.control(1, 0, usbif.SetupPacket{Request: usbif.ReqSetAddress, Value: 0}, nil)
			if rsp.Status != 0 {
				t.Fatalf("%+v", rsp)
			}
			if rsp, _, _ := r.front.Do(r.ctx, bulkIn, nil, nil, 64, 0); rsp.Status != usbif.StatusNoDev {
				t.Fatalf("address 2 after SET_ADDRESS 0: %+v", rsp)
			}
		}},
		{"duplicate in-flight ids", func(t *testing.T, r *rig) {
			b1, _ := r.front.NewBuffer(64, true)
			b2, _ := r.front.NewBuffer(64, true)
			q1, q2 := fronttest.Request(9, bulkIn, b1), fronttest.Request(9, bulkIn, b2)
			r.front.Submit(&q1)
			r.front.Submit(&q2)
			for i := 0; i < 2; i++ {
				if _, err := r.front.Wait(r.ctx, 9); err != nil {
					t.Fatal(err)
				}
			}
			b1.End()
			b2.End()
			if st := r.e.Stats(); st.Requests != st.Responses {
				t.Fatalf("%+v", st)
			}
		}},
		{"unlink of an unknown id", func(t *testing.T, r *rig) {
			q := usbif.URBRequest{ID: 5, Pipe: bulkIn.WithUnlink()}
			q.SetUnlinkID(300)
			r.front.Submit(&q)
			if rsp, err := r.front.Wait(r.ctx, 5); err != nil || rsp.Status != 0 {
				t.Fatalf("%+v %v", rsp, err)
			}
		}},
		{"never reads responses, floods events", func(t *testing.T, r *rig) {
			page := r.front.URBPage()
			before := ring.ReadHeader(page).RspProd
			for id := uint16(0); id < 16; id++ {
				b, _ := r.front.NewBuffer(64, true)
				q := fronttest.Request(id, bulkIn, b)
				r.front.Submit(&q)
			}
			for i := 0; i < 20000; i++ {
				r.front.Kick()
			}
			for ring.ReadHeader(page).RspProd-before != 16 {
				if r.ctx.Err() != nil {
					t.Fatal("requests not answered")
				}
				r.e.Stats()
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g0 := runtime.NumGoroutine()
			func() {
				bad, good := newRig(t), newRig(t)
				defer bad.stop(t)
				defer good.stop(t)
				bad.plug()
				bad.enumerate(2)
				good.plug()
				good.enumerate(2)
				g := startGood(good)
				tc.attack(t, bad)
				g.mu.Lock()
				before := g.n
				g.mu.Unlock()
				// The other guest still completes transfers after the attack.
				for i := 0; ; i++ {
					g.mu.Lock()
					n, err := g.n, g.err
					g.mu.Unlock()
					if n > before+10 || err != nil {
						break
					}
					if i > 5000 {
						t.Fatal("the other guest made no progress")
					}
					time.Sleep(time.Millisecond)
				}
				if n := g.finish(t); n == 0 {
					t.Fatal("the other guest completed nothing")
				}
			}()
			// Every goroutine of both engines and frontends is gone.
			for i := 0; runtime.NumGoroutine() > g0; i++ {
				if i > 2000 {
					buf := make([]byte, 1<<16)
					t.Fatalf("goroutines: %d before, %d after\n%s", g0, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
}

// BenchmarkNeighbourUnderFlood: a guest's 4 KiB transfers while another
// vusb's guest floods its event channel and never reads its responses,
// against the same guest alone, as a ratio (the engines are independent;
// what they share is the CPU).
func BenchmarkNeighbourUnderFlood(b *testing.B) {
	run := func(b *testing.B, flood bool) time.Duration {
		t := &testing.T{}
		good := newRig(t)
		good.plug()
		good.enumerate(2)
		var stop chan struct{}
		var wg sync.WaitGroup
		if flood {
			bad := newRig(t)
			bad.plug()
			stop = make(chan struct{})
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
						bad.front.Kick()
					}
				}
			}()
			defer bad.stop(t)
		}
		pipe := usbif.NewPipe(1, 2, 1, true, usbif.TypeBulk)
		for i := 0; i < 200; i++ { // warm
			good.front.Do(good.ctx, pipe, nil, nil, 4096, 0)
		}
		t0 := time.Now()
		for i := 0; i < b.N; i++ {
			if rsp, _, err := good.front.Do(good.ctx, pipe, nil, nil, 4096, 0); err != nil || rsp.Status != 0 {
				b.Fatal(err, rsp)
			}
		}
		d := time.Since(t0)
		if stop != nil {
			close(stop)
			wg.Wait()
		}
		good.stop(t)
		return d
	}
	alone := min(run(b, false), run(b, false))
	flooded := run(b, true)
	b.ReportMetric(float64(alone)/float64(flooded), "x-alone")
	b.ReportMetric(float64(flooded.Nanoseconds())/float64(b.N), "ns/URB-flooded")
}
