package usbback

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pvusb/pvusb/core/backend/fronttest"
	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/frontend"
	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/rules"
	"github.com/pvusb/pvusb/core/sim"
	"github.com/pvusb/pvusb/core/sim/simtest"
	"github.com/pvusb/pvusb/core/usbhost"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/core/xenbus"
	"github.com/pvusb/pvusb/stub/msc"
	"github.com/pvusb/pvusb/xs"
)

const benchDisk = 64 << 20

// benchFrontChild is domain 1 for the benchmarks: our frontend (16 URBs
// in flight, bounce pages granted once) and the usbhost disk client. It
// reads "read SIZE COUNT" lines and answers "done NANOS P50 P99" with the
// latency of each READ(10) command.
func benchFrontChild(dir string) error {
	ctx := context.Background()
	dom := uint32(1)
	if v, err := strconv.Atoi(os.Getenv("PVUSB_BENCH_DOM")); err == nil {
		dom = uint32(v)
	}
	d, err := sim.Join(dir, dom)
	if err != nil {
		return err
	}
	defer d.Close()
	c, err := xs.Dial(d.XenStorePath())
	if err != nil {
		return err
	}
	p := xenbus.NewPaths(dom, 0, 0, "vusb")
	if err := fronttest.WaitCreated(ctx, c, p); err != nil {
		return err
	}
	conns := make(chan frontend.Connection, 1)
	plugged := make(chan usbif.Speed, 4)
	drv := &frontend.Driver{BackDom: 0, Granter: grant.NewSimGranter(d), Events: evtchn.NewSim(d), Connections: conns, Poll: frontend.DefaultPoll,
		OnConn: func(port uint8, s usbif.Speed) {
			if port == 1 && s != usbif.SpeedNone {
				plugged <- s
			}
		}}
	go (&xenbus.Frontend{C: c, P: p, Driver: drv}).Run(ctx)
	conn := <-conns
	h := &usbhost.Host{F: conn.F}
	dev, err := h.Enumerate(ctx, 1, <-plugged)
	if err != nil {
		return err
	}
	disk, err := usbhost.OpenDisk(ctx, dev)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	buf := make([]byte, 1<<20)
	for sc.Scan() {
		var size, count int
		if _, err := fmt.Sscanf(sc.Text(), "read %d %d", &size, &count); err != nil {
			return err
		}
		lat := make([]time.Duration, count)
		blocks := uint32(size / 512)
		lba := uint32(0)
		t0 := time.Now()
		for i := 0; i < count; i++ {
			t1 := time.Now()
			if err := disk.Read(ctx, lba, buf[:size]); err != nil {
				return err
			}
			lat[i] = time.Since(t1)
			if lba += blocks; lba+blocks > benchDisk/512 {
				lba = 0
			}
		}
		total := time.Since(t0)
		p50, p99 := percentiles(lat)
		fmt.Printf("done %d %d %d\n", total.Nanoseconds(), p50.Nanoseconds(), p99.Nanoseconds())
	}
	return sc.Err()
}

func percentiles(lat []time.Duration) (p50, p99 time.Duration) {
	if len(lat) == 0 {
		return 0, 0
	}
	s := append([]time.Duration(nil), lat...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2], s[min(len(s)-1, len(s)*99/100)]
}

// benchRig is the backend service in this process (dom0) serving an
// emulated disk to the frontend child process (dom1).
type benchRig struct {
	in     io.WriteCloser
	out    *bufio.Scanner
	img    string
	cancel context.CancelFunc
	child  *exec.Cmd
}

func newBenchRig(b *testing.B) *benchRig {
	b.Helper()
	h := simtest.Start(b)
	d0 := simtest.Join(b, h, 0)
	c0, err := xs.Dial(sim.XenStorePath(h.Dir(), 0))
	if err != nil {
		b.Fatal(err)
	}
	img := filepath.Join(b.TempDir(), "disk.img")
	f, _ := os.Create(img)
	f.Truncate(benchDisk)
	f.Close()
	cfg, err := rules.Decode(fmt.Sprintf("rules = [%q]\n[[controller]]\ndomid = 1\ndevid = 0\nports = 1\ncreate = true\n", "emu-msc:"+img+":1:0:1"))
	if err != nil {
		b.Fatal(err)
	}
	svc := New(cfg, Platform{XS: c0, Mapper: grant.NewSimMapper(d0), BackDom: 0,
		Events: func() (evtchn.Channels, error) { return evtchn.NewSim(d0), nil }}, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	child := exec.CommandContext(ctx, os.Args[0], "-test.run=^$", "-test.bench=^$")
	child.Env = append(os.Environ(), "PVUSB_BENCH_FRONT="+h.Dir())
	child.Stderr = os.Stderr
	in, _ := child.StdinPipe()
	outp, _ := child.StdoutPipe()
	if err := child.Start(); err != nil {
		b.Fatal(err)
	}
	r := &benchRig{in: in, out: bufio.NewScanner(outp), img: img, cancel: cancel, child: child}
	if !r.out.Scan() || r.out.Text() != "ready" {
		b.Fatalf("frontend child: %q", r.out.Text())
	}
	b.Cleanup(func() {
		in.Close()
		child.Wait()
		cancel()
		<-done
		c0.Close()
	})
	return r
}

// read has the child run count READ(10)s of size bytes; it returns the
// whole time and the per-command p50 and p99.
func (r *benchRig) read(b *testing.B, size, count int) (total, p50, p99 time.Duration) {
	fmt.Fprintf(r.in, "read %d %d\n", size, count)
	if !r.out.Scan() {
		b.Fatal("frontend child ended")
	}
	f := strings.Fields(r.out.Text())
	if len(f) != 4 || f[0] != "done" {
		b.Fatalf("frontend child said %q", r.out.Text())
	}
	ns := func(s string) time.Duration { v, _ := strconv.ParseInt(s, 10, 64); return time.Duration(v) }
	return ns(f[1]), ns(f[2]), ns(f[3])
}

// directTime runs count READ(10)s of size through the disk called
// directly in this process (msc.Direct): the reference.
func directTime(d *msc.Direct, size, count int) (total, p50, p99 time.Duration) {
	buf := make([]byte, size)
	lat := make([]time.Duration, count)
	lba := uint32(0)
	t0 := time.Now()
	for i := 0; i < count; i++ {
		t1 := time.Now()
		if err := d.Read(lba, buf); err != nil {
			panic(err)
		}
		lat[i] = time.Since(t1)
		if lba += uint32(size / 512); lba+uint32(size/512) > benchDisk/512 {
			lba = 0
		}
	}
	total = time.Since(t0)
	p50, p99 = percentiles(lat)
	return
}

// BenchmarkWholePath reads the emulated disk through the whole path —
// frontend process → urb ring → backend (this process) → emulated disk
// → back — with READ(10) commands of 4 KiB, 64 KiB and 1 MiB (16 URBs of
// 64 KiB in flight), and the same reads of the same disk called directly
// in this process. Reported: MB/s of both, their ratio (x-direct), and
// for every size the added latency per command at p50 and p99. The
// allocations counted (-benchmem) are this process's: the backend's.
func BenchmarkWholePath(b *testing.B) {
	r := newBenchRig(b)
	dev, err := msc.Open(r.img, false)
	if err != nil {
		b.Fatal(err)
	}
	defer dev.Close()
	direct := msc.NewDirect(dev)
	for _, size := range []int{4 << 10, 64 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("read=%dKiB", size>>10), func(b *testing.B) {
			r.read(b, size, 20) // warm
			directTime(direct, size, 20)
			b.SetBytes(int64(size))
			b.ResetTimer()
			total, p50, p99 := r.read(b, size, b.N)
			b.StopTimer()
			dt, d50, d99 := directTime(direct, size, b.N)
			mbps := float64(size) * float64(b.N) / total.Seconds() / 1e6
			dmbps := float64(size) * float64(b.N) / dt.Seconds() / 1e6
			b.ReportMetric(mbps, "MB/s-path")
			b.ReportMetric(dmbps, "MB/s-direct")
			b.ReportMetric(mbps/dmbps, "x-direct")
			b.ReportMetric(float64(p50-d50)/1e3, "µs-added-p50")
			b.ReportMetric(float64(p99-d99)/1e3, "µs-added-p99")
		})
	}
}

// benchDaemonChild is pvusb usbback's service alone in a process, so its
// memory can be read: n controllers (doms 1..n), each with a disk.
func benchDaemonChild(dir string, n int) error {
	d0, err := sim.Join(dir, 0)
	if err != nil {
		return err
	}
	c0, err := xs.Dial(sim.XenStorePath(dir, 0))
	if err != nil {
		return err
	}
	src := "rules = ["
	tmp, err := os.MkdirTemp("", "pvusb-rss")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var ctrls string
	for dom := 1; dom <= n; dom++ {
		img := filepath.Join(tmp, fmt.Sprintf("d%d.img", dom))
		f, _ := os.Create(img)
		f.Truncate(benchDisk)
		f.Close()
		src += fmt.Sprintf("%q,", fmt.Sprintf("emu-msc:%s:%d:0:1", img, dom))
		ctrls += fmt.Sprintf("[[controller]]\ndomid = %d\ndevid = 0\nports = 1\ncreate = true\n", dom)
	}
	cfg, err := rules.Decode(src + "]\n" + ctrls)
	if err != nil {
		return err
	}
	svc := New(cfg, Platform{XS: c0, Mapper: grant.NewSimMapper(d0), BackDom: 0,
		Events: func() (evtchn.Channels, error) { return evtchn.NewSim(d0), nil }}, nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		io.Copy(io.Discard, os.Stdin) // the parent closes stdin to stop us
		cancel()
	}()
	fmt.Println("ready")
	return svc.Run(ctx)
}

// rssMiB reads a process's resident set.
func rssMiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return -1
}

// BenchmarkUsbbackMemory runs the backend service alone in a process with
// 4 controllers and reports its resident memory idle (no frontend), per
// connected vusb (4 frontend processes connected, disks enumerated), and
// per vusb after each read 8 MiB in 1 MiB commands (every slot buffer
// touched). Informational: memory is measured, never asserted.
func BenchmarkUsbbackMemory(b *testing.B) {
	const n = 4
	h := simtest.Start(b)
	daemon := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	daemon.Env = append(os.Environ(), "PVUSB_BENCH_DAEMON="+h.Dir(), fmt.Sprintf("PVUSB_BENCH_N=%d", n))
	daemon.Stderr = os.Stderr
	din, _ := daemon.StdinPipe()
	dout, _ := daemon.StdoutPipe()
	if err := daemon.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { din.Close(); daemon.Wait() }()
	if sc := bufio.NewScanner(dout); !sc.Scan() || sc.Text() != "ready" {
		b.Fatal("daemon did not start")
	}
	time.Sleep(200 * time.Millisecond) // let it settle: this is a reading, not a synchronisation
	idle := rssMiB(daemon.Process.Pid)
	var fronts []*benchRig
	for dom := 1; dom <= n; dom++ {
		child := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
		child.Env = append(os.Environ(), "PVUSB_BENCH_FRONT="+h.Dir(), fmt.Sprintf("PVUSB_BENCH_DOM=%d", dom))
		child.Stderr = os.Stderr
		in, _ := child.StdinPipe()
		out, _ := child.StdoutPipe()
		if err := child.Start(); err != nil {
			b.Fatal(err)
		}
		r := &benchRig{in: in, out: bufio.NewScanner(out), child: child}
		if !r.out.Scan() || r.out.Text() != "ready" {
			b.Fatalf("frontend %d did not start", dom)
		}
		fronts = append(fronts, r)
		defer func() { in.Close(); child.Wait() }()
	}
	connected := rssMiB(daemon.Process.Pid)
	for i := 0; i < b.N; i++ {
		for _, r := range fronts {
			r.read(b, 1<<20, 8)
		}
	}
	busy := rssMiB(daemon.Process.Pid)
	b.ReportMetric(idle, "MiB-idle")
	b.ReportMetric((connected-idle)/n, "MiB/vusb-connected")
	b.ReportMetric((busy-idle)/n, "MiB/vusb-after-IO")
}
