// Package evtchn is the event-channel seam of the hypervisor: bind a
// channel to a peer domain, notify it, and wait for its notifications with
// Xen's masking rule (a port that fired stays masked until unmasked;
// notifications while masked are latched, not lost). Two implementations:
// /dev/xen/evtchn and the simulated hypervisor (core/sim).
package evtchn

import (
	"context"
	"errors"
	"fmt"
)

// Port is a local event-channel port.
type Port uint32

// Channels is one process's event channels (one /dev/xen/evtchn open).
// Safe for concurrent use; Wait has one caller at a time.
type Channels interface {
	// BindInterdomain connects to remotePort of remoteDom (the backend
	// side: the port the frontend wrote to XenStore).
	BindInterdomain(remoteDom uint32, remotePort Port) (Port, error)
	// BindUnbound allocates a port remoteDom may bind to (the frontend
	// side; write the port to XenStore as event-channel).
	BindUnbound(remoteDom uint32) (Port, error)
	// Unbind closes a port.
	Unbind(Port) error
	// Notify signals the peer of a bound port.
	Notify(Port) error
	// Wait returns the next port that fired; it stays masked until Unmask.
	Wait(ctx context.Context) (Port, error)
	// Unmask re-enables a fired port; a notification latched meanwhile
	// fires it again at once.
	Unmask(Port) error
	Close() error
}

// Errors callers branch on.
var (
	// ErrNotBound: the port is not bound by these Channels.
	ErrNotBound = errors.New("evtchn: port not bound")
	// ErrPeerGone: the peer domain closed its end or died.
	ErrPeerGone = errors.New("evtchn: peer closed the channel")
	// ErrClosed: the Channels were closed.
	ErrClosed = errors.New("evtchn: closed")
)

// OpError is a failed event-channel operation with its context.
type OpError struct {
	Op   string
	Dom  uint32
	Port Port
	Err  error
}

func (e *OpError) Error() string {
	return fmt.Sprintf("%s event channel %d (dom%d): %v", e.Op, e.Port, e.Dom, e.Err)
}

// Unwrap returns the cause.
func (e *OpError) Unwrap() error { return e.Err }
