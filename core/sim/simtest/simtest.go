// Package simtest starts a simulated hypervisor and joins domains to it,
// for tests: everything is torn down by the test's cleanup.
package simtest

import (
	"context"
	"testing"

	"github.com/pvusb/pvusb/core/sim"
)

// Start runs a hypervisor in a temporary directory until the test ends.
func Start(t testing.TB) *sim.Hypervisor {
	t.Helper()
	h, err := sim.NewHypervisor(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return h
}

// Join joins the hypervisor as domain dom until the test ends.
func Join(t testing.TB, h *sim.Hypervisor, dom uint32) *sim.Domain {
	t.Helper()
	d, err := sim.Join(h.Dir(), dom)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}
