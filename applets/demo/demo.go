// Package demo is `pvusb demo`: the whole product on the simulated
// hypervisor in a few seconds, as separate processes (the hypervisor,
// usbback serving an emulated disk, keyboard and serial port, usbfront as
// dom 1), with this process as the guest's USB stack through usbfront's
// USB/IP export. It checks each device and reports what it measured.
package demo

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/pvusb/pvusb/applets/help"
	"github.com/pvusb/pvusb/applets/internal/spawn"
	"github.com/pvusb/pvusb/core/usbip"
)

// Command returns the applet.
func Command() *cli.Command {
	return help.WithExamples(&cli.Command{
		Name:  "demo",
		Usage: "run the whole path on the simulated hypervisor and check every device (seconds)",
		Description: "Starts pvusb sim, pvusb usbback (an emulated disk, keyboard and serial port)\n" +
			"and pvusb usbfront as dom 1, each in its own process, then, as the guest's USB stack\n" +
			"through usbfront's USB/IP export: enumerates the devices, writes the disk with random\n" +
			"data and reads it back, types on the keyboard, echoes through the serial port, and\n" +
			"measures URB latency. Exit status 0 when every check passed.",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "size", Value: 64, Usage: "MiB written to and read from the disk"},
			&cli.StringFlag{Name: "dir", Usage: "work in `DIR` and keep it (logs, disk image); default: a temporary directory, removed"},
		},
		Action: func(c *cli.Context) error {
			ctx, stop := signalNotify(c.Context)
			defer stop()
			return Run(ctx, c.App.Writer, c.App.ErrWriter, c.Int("size"), c.String("dir"))
		},
	},
		"pvusb demo",
		"pvusb demo --size 256 --dir /tmp/pvusb-demo   # keep the logs and the image",
	)
}

// step prints progress: "[2/7] starting usbback … ok (35 ms)".
type steps struct {
	w     io.Writer
	n, of int
	t0    time.Time
}

func (s *steps) begin(what string) {
	s.n++
	s.t0 = time.Now()
	fmt.Fprintf(s.w, "[%d/%d] %s … ", s.n, s.of, what)
}

func (s *steps) end(err error) error {
	if err != nil {
		fmt.Fprintf(s.w, "FAILED: %v\n", err)
		return err
	}
	fmt.Fprintf(s.w, "ok (%v)\n", time.Since(s.t0).Round(time.Millisecond))
	return nil
}

// Run runs the demo; the report goes to out, progress to progress.
func Run(ctx context.Context, out, progress io.Writer, sizeMiB int, keep string) error {
	if sizeMiB < 1 || sizeMiB > 4096 {
		return fmt.Errorf("--size %d: 1..4096 MiB", sizeMiB)
	}
	dir := keep
	var err error
	if dir == "" {
		if dir, err = os.MkdirTemp("", "pvusb-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	t0 := time.Now()
	st := &steps{w: progress, of: 8}
	g, err := spawn.New(dir)
	if err != nil {
		return err
	}
	defer g.Stop()
	start := func(args ...string) error { _, err := g.Start(args[0], args[1:]...); return err }
	simDir := filepath.Join(dir, "sim")
	st.begin("starting the simulated hypervisor (pvusb sim)")
	err = start("sim", "--dir", simDir)
	if err == nil {
		err = spawn.WaitFor(ctx, func() bool { _, e := os.Stat(filepath.Join(simDir, "xenstored.sock")); return e == nil })
	}
	if st.end(err) != nil {
		return err
	}

	st.begin(fmt.Sprintf("starting usbback: a %d MiB disk, a keyboard, a serial port", sizeMiB))
	img, fifo, tty := filepath.Join(dir, "disk.img"), filepath.Join(dir, "kbd.fifo"), filepath.Join(dir, "ttyPV0")
	err = prepare(img, sizeMiB, fifo)
	if err == nil {
		rules := fmt.Sprintf("sim = %q\ncontrol = %q\nrules = [%q, %q, %q]\n[[controller]]\ndomid = 1\ndevid = 0\nports = 4\ncreate = true\n",
			simDir, filepath.Join(dir, "usbback.sock"), "emu-msc:"+img+":1:0:1", "emu-kbd:"+fifo+":1:0:2", "emu-acm:"+tty+":1:0:3")
		err = os.WriteFile(filepath.Join(dir, "rules.toml"), []byte(rules), 0o600)
	}
	if err == nil {
		err = start("usbback", "-c", filepath.Join(dir, "rules.toml"))
	}
	if st.end(err) != nil {
		return err
	}

	st.begin("starting usbfront as dom 1, exporting over USB/IP on loopback")
	addr, err := spawn.FreeAddr()
	if err == nil {
		err = start("usbfront", "--sim", simDir, "--domid", "1", "--export", "tcp:"+addr, "--vhci", "off",
			"--control", filepath.Join(dir, "usbfront.sock"))
	}
	var devs []usbip.Device
	if err == nil {
		err = spawn.WaitFor(ctx, func() bool { devs = spawn.Devlist(addr); return len(devs) == 3 })
		if err != nil {
			err = fmt.Errorf("usbfront did not bring up the three devices (logs in %s): %w", dir, err)
		}
	}
	if st.end(err) != nil {
		return err
	}
	report := &bytes.Buffer{}
	fmt.Fprintf(report, "pvusb demo: the whole path on the simulated hypervisor (sim, usbback, usbfront: separate processes)\n")
	fmt.Fprintf(report, "devices seen by usbfront:\n")
	sort.Slice(devs, func(i, j int) bool { return devs[i].Busid < devs[j].Busid })
	for _, d := range devs {
		fmt.Fprintf(report, "  %-5s %04x:%04x  %-5s  %s\n", d.Busid, d.VID, d.PID, speedName(d.Speed), className(d))
	}

	var failed []string
	check := func(name string, err error) {
		if err != nil {
			failed = append(failed, name+": "+err.Error())
		}
	}
	st.begin(fmt.Sprintf("disk: writing %d MiB of random data", sizeMiB))
	disk, err := open(addr, "0-1")
	var data []byte
	var wr, rd time.Duration
	if err == nil {
		data = make([]byte, sizeMiB<<20)
		rand.Read(data)
		t := time.Now()
		for off := 0; off < len(data) && err == nil; off += 1 << 20 {
			err = disk.Write(uint32(off/512), data[off:off+1<<20])
		}
		wr = time.Since(t)
	}
	check("disk write", st.end(err))
	st.begin("disk: reading it back and comparing")
	if err == nil {
		t := time.Now()
		var got []byte
		for off := 0; off < len(data) && err == nil; off += 1 << 20 {
			if got, err = disk.Read(uint32(off/512), 1<<20); err == nil && !bytes.Equal(got, data[off:off+1<<20]) {
				err = fmt.Errorf("MiB %d read back differs", off>>20)
			}
		}
		rd = time.Since(t)
	}
	check("disk read", st.end(err))
	if err == nil {
		mbs := func(d time.Duration) float64 { return float64(len(data)) / d.Seconds() / 1e6 }
		fmt.Fprintf(report, "disk:     %d MiB written at %.0f MB/s, read back at %.0f MB/s, identical: OK\n", sizeMiB, mbs(wr), mbs(rd))
	} else {
		fmt.Fprintf(report, "disk:     FAILED: %v\n", err)
	}

	st.begin("disk: 2000 reads of 4 KiB, timing each data URB")
	p50, p99, err := latency(disk, 2000)
	check("latency", st.end(err))
	if err == nil {
		fmt.Fprintf(report, "latency:  4 KiB data URB p50 %v, p99 %v (USB/IP client -> usbfront -> ring -> usbback -> disk -> back)\n",
			p50.Round(time.Microsecond), p99.Round(time.Microsecond))
	}

	st.begin(`keyboard: typing "pvusb" into the event fifo`)
	typed, err := keyboard(addr, fifo, "pvusb")
	if err == nil && typed != "pvusb" {
		err = fmt.Errorf("received %q", typed)
	}
	check("keyboard", st.end(err))
	fmt.Fprintf(report, "keyboard: typed %q, received %q: %s\n", "pvusb", typed, okOr(err))

	st.begin("serial: echoing 4 KiB through the pty")
	n, err := serial(addr, tty, 4096)
	check("serial", st.end(err))
	fmt.Fprintf(report, "serial:   %d bytes echoed through %s: %s\n", n, tty, okOr(err))
	if len(failed) > 0 {
		fmt.Fprintf(report, "FAILED (%v): %s\n", time.Since(t0).Round(time.Millisecond), strings.Join(failed, "; "))
		out.Write(report.Bytes())
		return errors.New("demo failed")
	}
	fmt.Fprintf(report, "all checks passed in %v\n", time.Since(t0).Round(time.Millisecond))
	_, err = out.Write(report.Bytes())
	return err
}

func okOr(err error) string {
	if err != nil {
		return "FAILED: " + err.Error()
	}
	return "OK"
}

func prepare(img string, sizeMiB int, fifo string) error {
	f, err := os.Create(img)
	if err != nil {
		return err
	}
	if err := f.Truncate(int64(sizeMiB)<<20 + 1<<20); err != nil {
		f.Close()
		return err
	}
	f.Close()
	os.Remove(fifo)
	return unix.Mkfifo(fifo, 0o600)
}

// open imports a device and selects configuration 1, as the guest's
// kernel would after enumerating it.
func open(addr, busid string) (*usbip.Disk, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	d, err := usbip.Import(c, busid)
	if err != nil {
		c.Close()
		return nil, err
	}
	k := usbip.NewConn(c, d)
	if r, err := k.Do(usbip.DirOut, 0, [8]byte{0, 9, 1, 0, 0, 0, 0, 0}, nil, 0); err != nil || r.Status != 0 {
		k.Close()
		return nil, fmt.Errorf("SET_CONFIGURATION: %v %v", r, err)
	}
	return &usbip.Disk{K: k, In: 1, Out: 2}, nil
}

// latency times the data URB of n 4 KiB READ(10)s.
func latency(disk *usbip.Disk, n int) (p50, p99 time.Duration, err error) {
	if disk == nil {
		return 0, 0, errors.New("no disk")
	}
	lat := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		// CBW, then the timed data URB, then the CSW.
		cbw := cbw10(uint32(i), 0x28, uint32(i%1024)*8, 4096)
		if r, err := disk.K.Do(usbip.DirOut, 2, [8]byte{}, cbw, 0); err != nil || r.Status != 0 {
			return 0, 0, fmt.Errorf("CBW: %v", err)
		}
		t := time.Now()
		r, err := disk.K.Do(usbip.DirIn, 1, [8]byte{}, nil, 4096)
		lat = append(lat, time.Since(t))
		if err != nil || r.Status != 0 {
			return 0, 0, fmt.Errorf("data: %v", err)
		}
		if r, err := disk.K.Do(usbip.DirIn, 1, [8]byte{}, nil, 13); err != nil || r.Status != 0 {
			return 0, 0, fmt.Errorf("CSW: %v", err)
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}

func cbw10(tag uint32, op byte, lba uint32, n int) []byte {
	c := make([]byte, 31)
	copy(c, []byte{0x55, 0x53, 0x42, 0x43})
	c[4], c[5], c[6], c[7] = byte(tag), byte(tag>>8), byte(tag>>16), byte(tag>>24)
	c[8], c[9], c[10], c[11] = byte(n), byte(n>>8), byte(n>>16), byte(n>>24)
	c[12], c[14] = 0x80, 10
	c[15] = op
	c[17], c[18], c[19], c[20] = byte(lba>>24), byte(lba>>16), byte(lba>>8), byte(lba)
	c[22], c[23] = byte((n/512)>>8), byte(n/512)
	return c
}

// keyboard types text into the event fifo and decodes the reports that
// come back into text.
func keyboard(addr, fifo, text string) (string, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	d, err := usbip.Import(c, "0-2")
	if err != nil {
		c.Close()
		return "", err
	}
	k := usbip.NewConn(c, d)
	defer k.Close()
	k.Do(usbip.DirOut, 0, [8]byte{0, 9, 1, 0, 0, 0, 0, 0}, nil, 0)
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(w, "type %s\n", text)
	w.Close()
	var got []byte
	for i := 0; i < 2*len(text); i++ { // a press and a release per character
		_, ch, err := k.Submit(usbip.DirIn, 1, [8]byte{}, 0, 10, nil, 8, nil)
		if err != nil {
			return string(got), err
		}
		var r *usbip.Result
		select {
		case r = <-ch:
		case <-time.After(10 * time.Second):
			return string(got), errors.New("no key report")
		}
		if r.Status != 0 || len(r.Data) < 3 {
			return string(got), fmt.Errorf("report status %d", r.Status)
		}
		if u := r.Data[2]; u >= 0x04 && u <= 0x1d {
			got = append(got, 'a'+u-0x04)
		}
	}
	return string(got), nil
}

// serial echoes n random bytes: out through the device, a program on the
// pty sends them back, in through the device.
func serial(addr, tty string, n int) (int, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return 0, err
	}
	d, err := usbip.Import(c, "0-3")
	if err != nil {
		c.Close()
		return 0, err
	}
	k := usbip.NewConn(c, d)
	defer k.Close()
	k.Do(usbip.DirOut, 0, [8]byte{0, 9, 1, 0, 0, 0, 0, 0}, nil, 0)
	pty, err := os.OpenFile(tty, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer pty.Close()
	go func() { // the echo program in dom0
		buf := make([]byte, 4096)
		for {
			m, err := pty.Read(buf)
			if err != nil {
				return
			}
			if _, err := pty.Write(buf[:m]); err != nil {
				return
			}
		}
	}()
	msg := make([]byte, n)
	rand.Read(msg)
	if r, err := k.Do(usbip.DirOut, 2, [8]byte{}, msg, 0); err != nil || r.Status != 0 {
		return 0, fmt.Errorf("bulk OUT: %v", err)
	}
	var got []byte
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < n && time.Now().Before(deadline) {
		r, err := k.Do(usbip.DirIn, 1, [8]byte{}, nil, 512)
		if err != nil || r.Status != 0 {
			return len(got), fmt.Errorf("bulk IN: %v", err)
		}
		got = append(got, r.Data...)
	}
	if !bytes.Equal(got, msg) {
		return len(got), fmt.Errorf("echo differs after %d bytes", len(got))
	}
	return len(got), nil
}

func speedName(s uint32) string {
	switch s {
	case 1:
		return "low"
	case 2:
		return "full"
	case 3:
		return "high"
	}
	return "?"
}

func className(d usbip.Device) string {
	if len(d.Interfaces) == 0 {
		return "?"
	}
	switch d.Interfaces[0].Class {
	case 0x08:
		return "mass storage (Bulk-Only, SCSI)"
	case 0x03:
		return "HID boot keyboard"
	case 0x02:
		return "CDC-ACM serial port"
	}
	return fmt.Sprintf("class %02x", d.Interfaces[0].Class)
}

func signalNotify(parent context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
}
