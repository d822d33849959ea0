// Package bench is `pvusb bench`: the transport and the devices measured
// side by side with reference paths, in one run, as ratios. It starts
// the simulated hypervisor, pvusb usbback and pvusb usbfront in their own
// processes and is itself a frontend (dom 1), like usbfront, so the ring
// it measures runs between separate processes.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pvusb/pvusb/applets/help"
	"github.com/pvusb/pvusb/applets/internal/spawn"
	"github.com/pvusb/pvusb/core/ctlsock"
	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/frontend"
	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/sim"
	"github.com/pvusb/pvusb/core/usbback"
	"github.com/pvusb/pvusb/core/usbhost"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/core/usbip"
	"github.com/pvusb/pvusb/core/xenbus"
	"github.com/pvusb/pvusb/stub/libusb"
	"github.com/pvusb/pvusb/stub/msc"
	"github.com/pvusb/pvusb/xs"
)

// Result is one measurement and its reference.
type Result struct {
	Name      string  `json:"name"`
	Value     float64 `json:"value"`
	Unit      string  `json:"unit"`
	Reference string  `json:"reference,omitempty"`
	RefValue  float64 `json:"reference_value,omitempty"`
	Ratio     float64 `json:"ratio,omitempty"`
	Target    string  `json:"target,omitempty"`
	Met       *bool   `json:"met,omitempty"`
}

// Command returns the applet.
func Command() *cli.Command {
	return help.WithExamples(&cli.Command{
		Name:  "bench",
		Usage: "measure the transport and the devices against reference paths, as ratios",
		Description: "Runs, side by side in one run: the ring alone (a device that only completes) for\n" +
			"empty, 4 KiB and 64 KiB URBs against memcpy of the same bytes; the emulated disk through\n" +
			"the whole path against the same disk called directly; USB/IP export over loopback\n" +
			"against the ring path; and the daemons' memory. Progress goes to stderr, the table (or\n" +
			"--json) to stdout. Figures move with the machine: compare ratios, not absolutes.",
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "time", Value: time.Second, Usage: "how long each measurement runs"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
			&cli.BoolFlag{Name: "quick", Usage: "a quick look: 200 ms per measurement"},
			&cli.StringFlag{Name: "host", Usage: "also measure host mass-storage device `BUSID` through pvusb against gousb (libusb) directly"},
		},
		Action: func(c *cli.Context) error {
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer stop()
			d := c.Duration("time")
			if c.Bool("quick") {
				d = 200 * time.Millisecond
			}
			rs, err := Run(ctx, c.App.ErrWriter, d, c.String("host"))
			if err != nil {
				return err
			}
			return Print(c.App.Writer, rs, c.Bool("json"))
		},
	},
		"pvusb bench",
		"pvusb bench --quick",
		"pvusb bench --time 3s --json | jq '.[] | {name, ratio}'",
	)
}

// Print writes the results as a table or JSON.
func Print(w io.Writer, rs []Result, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rs)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEASUREMENT\tPVUSB\tREFERENCE (same run)\tRATIO\tTARGET")
	for _, r := range rs {
		ref, ratio := "-", "-"
		if r.Reference != "" {
			ref = r.Reference
		}
		if r.Ratio != 0 {
			ratio = fmt.Sprintf("%.2fx", r.Ratio)
		}
		target := r.Target
		if r.Met != nil {
			if *r.Met {
				target += " (met)"
			} else {
				target += " (missed)"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Name, human(r.Value, r.Unit), ref, ratio, dash(target))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func human(v float64, unit string) string {
	switch unit {
	case "B/s":
		switch {
		case v >= 1e9:
			return fmt.Sprintf("%.2f GB/s", v/1e9)
		case v >= 1e6:
			return fmt.Sprintf("%.1f MB/s", v/1e6)
		}
		return fmt.Sprintf("%.0f kB/s", v/1e3)
	case "URB/s":
		return fmt.Sprintf("%.0f k URB/s", v/1e3)
	case "MiB":
		return fmt.Sprintf("%.1f MiB", v)
	case "us":
		return fmt.Sprintf("%.0f µs", v)
	case "skipped":
		return "skipped"
	}
	return fmt.Sprintf("%g %s", v, unit)
}

// rig is the processes and our own frontend.
type rig struct {
	dir     string
	g       *spawn.Group
	back    *exec.Cmd
	front   *exec.Cmd
	f       *frontend.Frontend
	null    *usbhost.Device
	disk    *usbhost.Disk
	addr    string // usbfront's USB/IP export
	img     string
	host    *usbhost.Host
	plugged chan usbif.ConnResponse
	cleanup []func()
}

func (r *rig) close() {
	for i := len(r.cleanup) - 1; i >= 0; i-- {
		r.cleanup[i]()
	}
	if r.g != nil {
		r.g.Stop()
	}
	os.RemoveAll(r.dir)
}

const benchDisk = 64 << 20

// Run measures everything; progress goes to progress.
func Run(ctx context.Context, progress io.Writer, each time.Duration, host string) ([]Result, error) {
	r, err := setup(ctx, progress)
	if err != nil {
		return nil, err
	}
	defer r.close()
	var rs []Result
	say := func(s string) { fmt.Fprintf(progress, "bench: %s\n", s) }

	// The ring alone: the null device's bulk IN, 16 URBs in flight.
	for _, size := range []int{0, 4 << 10, 64 << 10} {
		say(fmt.Sprintf("ring, %d-byte URBs, 16 in flight, %v", size, each))
		n, d, err := r.ring(ctx, size, each)
		if err != nil {
			return nil, err
		}
		rate := float64(n) / d.Seconds()
		if size == 0 {
			met := rate >= 500e3
			rs = append(rs, Result{Name: "ring, empty URBs (null device)", Value: rate, Unit: "URB/s", Target: ">= 500 k URB/s", Met: &met})
			continue
		}
		mc := memcpyRate(size, each/4)
		res := Result{Name: fmt.Sprintf("ring, %d KiB URBs (null device)", size>>10), Value: rate * float64(size), Unit: "B/s",
			Reference: "memcpy " + human(mc, "B/s"), RefValue: mc, Ratio: rate * float64(size) / mc}
		if size == 64<<10 {
			met := res.Value >= 1e9
			res.Target, res.Met = ">= 1 GB/s", &met
		}
		rs = append(rs, res)
	}

	// The disk through the whole path and called directly.
	dev, err := msc.Open(r.img, true)
	if err != nil {
		return nil, err
	}
	defer dev.Close()
	direct := msc.NewDirect(dev)
	var ring64 float64
	for _, size := range []int{64 << 10, 1 << 20} {
		say(fmt.Sprintf("disk, %d KiB READ(10)s through the whole path and directly, %v each", size>>10, each))
		path, err := rate(each, size, func(lba uint32, b []byte) error { return r.disk.Read(ctx, lba, b) })
		if err != nil {
			return nil, err
		}
		dref, err := rate(each, size, direct.Read)
		if err != nil {
			return nil, err
		}
		res := Result{Name: fmt.Sprintf("emulated disk, %d KiB READ(10)", size>>10), Value: path, Unit: "B/s",
			Reference: "disk called directly " + human(dref, "B/s"), RefValue: dref, Ratio: path / dref}
		if size == 64<<10 {
			ring64 = path
		} else {
			met := res.Ratio >= 0.9 && path >= 1e9
			res.Target, res.Met = ">= 0.9x direct and >= 1 GB/s", &met
		}
		rs = append(rs, res)
	}

	// USB/IP export over loopback against the ring path.
	say(fmt.Sprintf("USB/IP export, 64 KiB READ(10)s over loopback TCP, %v", each))
	exp, err := r.usbipRate(each, 64<<10)
	if err != nil {
		return nil, err
	}
	met := exp/ring64 >= 0.8
	rs = append(rs, Result{Name: "USB/IP export, 64 KiB READ(10), loopback", Value: exp, Unit: "B/s",
		Reference: "ring path " + human(ring64, "B/s"), RefValue: ring64, Ratio: exp / ring64, Target: ">= 0.8x the ring path", Met: &met})

	// A host device through pvusb, then through gousb directly.
	if host == "" {
		rs = append(rs, Result{Name: "host device, 64 KiB READ(10)", Unit: "skipped", Reference: "gousb directly", Target: "no --host BUSID given"})
	} else {
		say(fmt.Sprintf("host device %s, 64 KiB READ(10)s through pvusb, then through gousb, %v each", host, each))
		via, direct, err := r.hostRates(ctx, host, each)
		if err != nil {
			return nil, fmt.Errorf("host device %s: %w", host, err)
		}
		rs = append(rs, Result{Name: "host device " + host + ", 64 KiB READ(10)", Value: via, Unit: "B/s",
			Reference: "gousb directly " + human(direct, "B/s"), RefValue: direct, Ratio: via / direct})
	}

	// Memory of the daemons, after all that.
	for _, p := range []struct {
		name string
		cmd  *exec.Cmd
	}{{"usbfront resident memory", r.front}, {"usbback resident memory", r.back}} {
		m := spawn.RSSMiB(p.cmd.Process.Pid)
		met := m <= 20
		rs = append(rs, Result{Name: p.name, Value: m, Unit: "MiB", Target: "<= 20 MiB", Met: &met})
	}
	return rs, nil
}

// setup starts sim, usbback (dom1: a null device and a disk; dom2: the
// same disk) and usbfront (dom2, exporting), and connects our own
// frontend as dom1.
func setup(ctx context.Context, progress io.Writer) (*rig, error) {
	dir, err := os.MkdirTemp("", "pvusb-bench-")
	if err != nil {
		return nil, err
	}
	r := &rig{dir: dir, img: filepath.Join(dir, "disk.img")}
	ok := false
	defer func() {
		if !ok {
			r.close()
		}
	}()
	if r.g, err = spawn.New(dir); err != nil {
		return nil, err
	}
	fmt.Fprintln(progress, "bench: starting the simulated hypervisor, usbback and usbfront")
	simDir := filepath.Join(dir, "sim")
	if _, err := r.g.Start("sim", "--dir", simDir); err != nil {
		return nil, err
	}
	if err := spawn.WaitFor(ctx, func() bool { _, e := os.Stat(filepath.Join(simDir, "xenstored.sock")); return e == nil }); err != nil {
		return nil, errors.New("the simulator did not start")
	}
	f, _ := os.Create(r.img)
	f.Truncate(benchDisk)
	f.Close()
	rules := fmt.Sprintf(`sim = %q
control = %q
rules = ["emu-null:bench:1:0:1", "emu-msc:%s:1:0:2", "emu-msc:%s:2:0:1"]
[[controller]]
domid = 1
devid = 0
ports = 3
create = true
[[controller]]
domid = 2
devid = 0
ports = 1
create = true
`, simDir, filepath.Join(dir, "usbback.sock"), r.img, r.img)
	os.WriteFile(filepath.Join(dir, "rules.toml"), []byte(rules), 0o600)
	if r.back, err = r.g.Start("usbback", "-c", filepath.Join(dir, "rules.toml")); err != nil {
		return nil, err
	}
	if r.addr, err = spawn.FreeAddr(); err != nil {
		return nil, err
	}
	if r.front, err = r.g.Start("usbfront", "--sim", simDir, "--domid", "2", "--export", "tcp:"+r.addr, "--vhci", "off",
		"--control", filepath.Join(dir, "usbfront.sock")); err != nil {
		return nil, err
	}

	// Our frontend, dom 1.
	d, err := sim.Join(simDir, 1)
	if err != nil {
		return nil, err
	}
	r.cleanup = append(r.cleanup, func() { d.Close() })
	c, err := xs.Dial(d.XenStorePath())
	if err != nil {
		return nil, err
	}
	r.cleanup = append(r.cleanup, func() { c.Close() })
	p := xenbus.NewPaths(1, 0, 0, "vusb")
	if err := spawn.WaitFor(ctx, func() bool { ok, _ := c.Exists(p.Frontend + "/backend"); return ok }); err != nil {
		return nil, errors.New("usbback never created the controller")
	}
	conns := make(chan frontend.Connection, 1)
	plugged := make(chan usbif.ConnResponse, 8)
	drv := &frontend.Driver{Granter: grant.NewSimGranter(d), Events: evtchn.NewSim(d), Connections: conns, Poll: frontend.DefaultPoll,
		OnConn: func(port uint8, s usbif.Speed) {
			select {
			case plugged <- usbif.ConnResponse{Port: port, Speed: s}:
			default:
			}
		}}
	mctx, stop := context.WithCancel(context.Background())
	mdone := make(chan struct{})
	go func() { (&xenbus.Frontend{C: c, P: p, Driver: drv}).Run(mctx); close(mdone) }()
	r.cleanup = append(r.cleanup, func() { stop(); <-mdone })
	var conn frontend.Connection
	select {
	case conn = <-conns:
	case <-time.After(20 * time.Second):
		return nil, errors.New("our frontend never connected")
	}
	r.f, r.plugged = conn.F, plugged
	h := &usbhost.Host{F: conn.F}
	r.host = h
	for i := 0; i < 2; i++ {
		var ev usbif.ConnResponse
		select {
		case ev = <-plugged:
		case <-time.After(20 * time.Second):
			return nil, errors.New("the devices never appeared")
		}
		dev, err := h.Enumerate(ctx, ev.Port, ev.Speed)
		if err != nil {
			return nil, err
		}
		if ev.Port == 1 {
			r.null = dev
		} else if r.disk, err = usbhost.OpenDisk(ctx, dev); err != nil {
			return nil, err
		}
	}
	if err := spawn.WaitFor(ctx, func() bool { return len(spawn.Devlist(r.addr)) == 1 }); err != nil {
		return nil, errors.New("usbfront never exported the disk")
	}
	ok = true
	return r, nil
}

// hostRates reads a host disk through pvusb (plugged into our port 3 by
// usbback), then, given back to the host, through gousb.
func (r *rig) hostRates(ctx context.Context, busid string, d time.Duration) (float64, float64, error) {
	ctl := filepath.Join(r.dir, "usbback.sock")
	var rsp usbback.Response
	if err := ctlsock.Call(ctl, usbback.Request{Op: "add", Rule: busid + ":1:0:3"}, &rsp); err != nil || rsp.Error != "" {
		return 0, 0, fmt.Errorf("vportctl add: %v %s", err, rsp.Error)
	}
	var ev usbif.ConnResponse
	select {
	case ev = <-r.plugged:
	case <-time.After(20 * time.Second):
		return 0, 0, errors.New("the host device never appeared on the vusb")
	}
	dev, err := r.host.Enumerate(ctx, ev.Port, ev.Speed)
	if err != nil {
		return 0, 0, err
	}
	disk, err := usbhost.OpenDisk(ctx, dev)
	if err != nil {
		return 0, 0, err
	}
	via, err := rate(d, 64<<10, func(lba uint32, b []byte) error { return disk.Read(ctx, lba, b) })
	if err != nil {
		return 0, 0, err
	}
	if err := ctlsock.Call(ctl, usbback.Request{Op: "del", Rule: "1:0:3"}, &rsp); err != nil || rsp.Error != "" {
		return 0, 0, fmt.Errorf("vportctl del: %v %s", err, rsp.Error)
	}
	time.Sleep(time.Second) // the kernel's driver binds it again; gousb detaches it
	g, err := libusb.Disk(busid)
	if err != nil {
		return 0, 0, err
	}
	defer g.Close()
	direct, err := rate(d, 64<<10, g.Read)
	return via, direct, err
}

// ring keeps 16 URBs of size on the null device's bulk IN for d and
// counts the completions.
func (r *rig) ring(ctx context.Context, size int, d time.Duration) (int, time.Duration, error) {
	done := make(chan *frontend.URB, frontend.Slots)
	for i := 0; i < frontend.Slots; i++ {
		u := r.null.URB(usbif.TypeBulk, 0x81, make([]byte, size))
		u.Done = done
		if err := r.f.Submit(u); err != nil {
			return 0, 0, err
		}
	}
	n := 0
	t0 := time.Now()
	deadline := t0.Add(d)
	stopping := false
	for inflight := frontend.Slots; inflight > 0; {
		var u *frontend.URB
		select {
		case u = <-done:
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(10 * time.Second):
			return 0, 0, errors.New("a URB never completed")
		}
		if u.Status != usbif.StatusOK || u.Actual != size {
			return 0, 0, fmt.Errorf("URB: %v, %d bytes", u.Status, u.Actual)
		}
		if !stopping {
			n++
			if n&63 == 0 && time.Now().After(deadline) {
				stopping = true
			} else if err := r.f.Submit(u); err == nil {
				continue
			}
		}
		inflight--
	}
	return n, time.Since(t0), nil
}

// rate reads the disk with size-byte reads for d, sequentially, wrapping.
func rate(d time.Duration, size int, read func(lba uint32, b []byte) error) (float64, error) {
	buf := make([]byte, size)
	var lba uint32
	n := 0
	t0 := time.Now()
	for time.Since(t0) < d {
		if err := read(lba, buf); err != nil {
			return 0, err
		}
		n++
		if lba += uint32(size / 512); int(lba)*512+size > benchDisk {
			lba = 0
		}
	}
	return float64(n*size) / time.Since(t0).Seconds(), nil
}

func (r *rig) usbipRate(d time.Duration, size int) (float64, error) {
	c, err := net.Dial("tcp", r.addr)
	if err != nil {
		return 0, err
	}
	dev, err := usbip.Import(c, "0-1")
	if err != nil {
		c.Close()
		return 0, err
	}
	k := usbip.NewConn(c, dev)
	defer k.Close()
	if res, err := k.Do(usbip.DirOut, 0, [8]byte{0, 9, 1, 0, 0, 0, 0, 0}, nil, 0); err != nil || res.Status != 0 {
		return 0, fmt.Errorf("SET_CONFIGURATION over USB/IP: %v", err)
	}
	disk := &usbip.Disk{K: k, In: 1, Out: 2}
	return rate(d, size, func(lba uint32, b []byte) error {
		got, err := disk.Read(lba, len(b))
		copy(b, got)
		return err
	})
}

// memcpyRate is how fast this process copies size-byte buffers.
func memcpyRate(size int, d time.Duration) float64 {
	src, dst := make([]byte, size), make([]byte, size)
	n := 0
	t0 := time.Now()
	for time.Since(t0) < d {
		for i := 0; i < 64; i++ {
			copy(dst, src)
		}
		n += 64
	}
	return float64(n*size) / time.Since(t0).Seconds()
}
