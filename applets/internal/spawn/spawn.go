// Package spawn runs pvusb's own applets as child processes, the way
// `pvusb demo` and `pvusb bench` put the simulator, usbback and usbfront
// each in a process of its own, and the small waits and readings that go
// with them.
package spawn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pvusb/pvusb/core/usbip"
)

// Group is the children of one run; each logs to Dir/<applet>.log and
// dies with us (Pdeathsig).
type Group struct {
	Dir   string
	self  string
	procs []*exec.Cmd
}

// New makes a group working in dir.
func New(dir string) (*Group, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return &Group{Dir: dir, self: self}, nil
}

// Start runs `pvusb APPLET ARGS...` (this binary) in the background.
func (g *Group) Start(applet string, args ...string) (*exec.Cmd, error) {
	logf, err := os.Create(filepath.Join(g.Dir, applet+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(g.self, append([]string{applet}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	g.procs = append(g.procs, cmd)
	return cmd, nil
}

// Stop ends the children, the last started first (usbfront before
// usbback, so the vusb closes cleanly), and waits for them.
func (g *Group) Stop() {
	for i := len(g.procs) - 1; i >= 0; i-- {
		g.procs[i].Process.Signal(syscall.SIGTERM)
		g.procs[i].Wait()
	}
	g.procs = nil
}

// WaitFor polls cond (every 20 ms, at most 20 s): another process is
// coming up.
func WaitFor(ctx context.Context, cond func() bool) error {
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// FreeAddr is a loopback TCP address nobody listens on now.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Devlist asks a USB/IP server for its devices (nil if it does not answer).
func Devlist(addr string) []usbip.Device {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return nil
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	d, _ := usbip.Devlist(c)
	return d
}

// RSSMiB is a process's resident memory (VmRSS), -1 if unknown.
func RSSMiB(pid int) float64 {
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
