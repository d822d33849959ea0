package sim_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/sim"
	"github.com/pvusb/pvusb/core/sim/simtest"
	"github.com/pvusb/pvusb/xs"
)

// The child process of TestMultiProcessSharedMemory runs this when the
// test binary is re-executed with PVUSB_SIM_CHILD set.
func TestMain(m *testing.M) {
	if dir := os.Getenv("PVUSB_SIM_CHILD"); dir != "" {
		if err := granterChild(dir); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func ctx10s(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// granterChild is domain 1: it grants two writable pages and one
// read-only page to dom0, allocates an unbound event channel for dom0,
// publishes them in XenStore, answers events by echoing, and obeys
// commands written to its test/cmd node.
func granterChild(dir string) error {
	d, err := sim.Join(dir, 1)
	if err != nil {
		return err
	}
	c, err := xs.Dial(d.XenStorePath())
	if err != nil {
		return err
	}
	g, ch := grant.NewSimGranter(d), evtchn.NewSim(d)
	rw, err := g.Grant(0, 2, true)
	if err != nil {
		return err
	}
	ro, err := g.Grant(0, 1, false)
	if err != nil {
		return err
	}
	copy(rw.Bytes(), "A:1")
	copy(ro.Bytes(), "read-only page of dom1")
	port, err := ch.BindUnbound(0)
	if err != nil {
		return err
	}
	err = c.Transaction(context.Background(), func(tx xs.Handle) error {
		tx.WriteString("test/rw-refs", fmt.Sprintf("%d %d", rw.Refs()[0], rw.Refs()[1]))
		tx.WriteString("test/ro-ref", fmt.Sprint(ro.Refs()[0]))
		return tx.WriteString("test/port", fmt.Sprint(port))
	})
	if err != nil {
		return err
	}
	go func() {
		for {
			p, err := ch.Wait(context.Background())
			if err != nil {
				return
			}
			// Echo what dom0 wrote in page 1 back into page 0.
			msg := strings.TrimRight(string(rw.Bytes()[4096:4096+16]), "\x00")
			copy(rw.Bytes(), "A saw "+msg)
			ch.Unmask(p)
			ch.Notify(p)
		}
	}()
	w, err := c.Watch("test/cmd", "cmd")
	if err != nil {
		return err
	}
	for range w.Events {
		cmd, _ := c.ReadString("test/cmd")
		switch cmd {
		case "end-rw":
			res := "ended"
			if err := rw.End(); errors.Is(err, grant.ErrBusy) {
				res = "busy"
			} else if err != nil {
				res = err.Error()
			}
			c.WriteString("test/result", res)
		case "wait":
			select {} // stay alive until killed
		}
	}
	return nil
}

func TestMultiProcessSharedMemory(t *testing.T) {
	h := simtest.Start(t)
	ctx := ctx10s(t)
	d0 := simtest.Join(t, h, 0)
	c0, err := xs.Dial(sim.XenStorePath(h.Dir(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c0.Close()
	testClient = c0
	rel, _ := c0.Watch(xs.ReleaseDomain, "rel")
	<-rel.Events
	ready, _ := c0.Watch("/local/domain/1/test/port", "ready")
	<-ready.Events

	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), "PVUSB_SIM_CHILD="+h.Dir())
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill()
	waitFor(t, ctx, ready, "/local/domain/1/test/port")

	dec := xs.NewDecoder(c0.Handle, "/local/domain/1/test")
	var rw0, rw1 uint64
	fmt.Sscanf(dec.String("rw-refs"), "%d %d", &rw0, &rw1)
	roRef, remotePort := dec.Uint("ro-ref", 0, 1<<32-1), dec.Uint("port", 1, 1<<16)
	if err := dec.Err(); err != nil {
		t.Fatal(err)
	}

	m := grant.NewSimMapper(d0)
	rw, err := m.Map(1, []grant.Ref{grant.Ref(rw0), grant.Ref(rw1)}, true)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(rw.Bytes()[:3]); got != "A:1" {
		t.Fatalf("dom0 reads %q from dom1's page", got)
	}
	ro, err := m.Map(1, []grant.Ref{grant.Ref(roRef)}, false)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(ro.Bytes()), "read-only page of dom1") {
		t.Fatal("read-only page content")
	}
	if _, err := m.Map(1, []grant.Ref{grant.Ref(roRef)}, true); !errors.Is(err, grant.ErrReadOnly) {
		t.Errorf("read-only grant mapped writable: %v", err)
	}
	if _, err := m.Map(1, []grant.Ref{9999}, false); err == nil {
		t.Error("unused ref mapped")
	}

	// Events both ways over real shared memory.
	ch := evtchn.NewSim(d0)
	defer ch.Close()
	port, err := ch.BindInterdomain(1, evtchn.Port(remotePort))
	if err != nil {
		t.Fatal(err)
	}
	copy(rw.Bytes()[4096:], "B:2")
	if err := ch.Notify(port); err != nil {
		t.Fatal(err)
	}
	if p, err := ch.Wait(ctx); err != nil || p != port {
		t.Fatalf("no event back from dom1: %v %v", p, err)
	}
	if got := string(rw.Bytes()[:8]); got != "A saw B:" {
		t.Errorf("dom1's answer in shared memory: %q", got)
	}

	// Ending a mapped grant is refused; after unmapping it succeeds.
	res, _ := c0.Watch("/local/domain/1/test/result", "res")
	<-res.Events
	c0.WriteString("/local/domain/1/test/cmd", "end-rw")
	if r := waitFor(t, ctx, res, "/local/domain/1/test/result"); r != "busy" {
		t.Errorf("ending a mapped grant: %q", r)
	}
	if err := rw.Unmap(); err != nil {
		t.Fatal(err)
	}
	c0.WriteString("/local/domain/1/test/result", "")
	<-res.Events
	c0.WriteString("/local/domain/1/test/cmd", "x")
	c0.WriteString("/local/domain/1/test/cmd", "end-rw")
	if r := waitFor(t, ctx, res, "/local/domain/1/test/result"); r != "ended" {
		t.Errorf("ending an unmapped grant: %q", r)
	}
	if _, err := m.Map(1, []grant.Ref{grant.Ref(rw0)}, true); err == nil {
		t.Error("ended grant still mappable")
	}

	// Killing dom1 releases everything in dom0's view.
	c0.WriteString("/local/domain/1/test/cmd", "wait")
	child.Process.Kill()
	child.Wait()
	select {
	case e := <-rel.Events:
		if e.Path != xs.ReleaseDomain {
			t.Errorf("release event %+v", e)
		}
	case <-ctx.Done():
		t.Fatal("no @releaseDomain after dom1 died")
	}
	if _, err := d0.PeerFD(uint32(port)); !errors.Is(err, sim.ErrPeerGone) {
		t.Errorf("channel to the dead domain: %v", err)
	}
	if _, err := m.Map(1, []grant.Ref{grant.Ref(roRef)}, false); !errors.Is(err, sim.ErrBadDomain) {
		t.Errorf("map from the dead domain: %v", err)
	}
	if !strings.HasPrefix(string(ro.Bytes()), "read-only page of dom1") {
		t.Error("a page still mapped must stay readable after its granter died (as on Xen)")
	}
	if _, err := os.Stat(sim.XenStorePath(h.Dir(), 1)); !os.IsNotExist(err) {
		t.Errorf("dom1's XenStore socket outlived it: %v", err)
	}
	ro.Unmap()
}

// waitFor waits for a watch event after which path has a non-empty value.
func waitFor(t *testing.T, ctx context.Context, w *xs.Watch, path string) string {
	return waitForOn(t, ctx, testClient, w, path)
}

var testClient *xs.Client

func waitForOn(t *testing.T, ctx context.Context, c *xs.Client, w *xs.Watch, path string) string {
	t.Helper()
	for {
		select {
		case _, ok := <-w.Events:
			if !ok {
				t.Fatal("watch closed")
			}
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", path)
		}
		if v, err := c.ReadString(path); err == nil && v != "" {
			return v
		}
	}
}
